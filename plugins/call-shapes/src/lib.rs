//! Benchmark guest: the echo in both call shapes of `wit/call-shapes.wit`.

wit_bindgen::generate!({ world: "call-shapes", path: "wit" });

struct Echo;

impl Guest for Echo {
    fn handle(data: Vec<u8>) {
        send(&data);
    }

    fn run() {
        while let Some(data) = next_event() {
            send(&data);
        }
    }
}

export!(Echo);
