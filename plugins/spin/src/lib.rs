//! Test plugin: echoes, but on a chunk containing `spin` loops forever without calling the
//! host. The host must stop it at the end of its CPU budget, and other connections must keep
//! being served meanwhile (the guest yields on every epoch tick). On a chunk containing
//! `sleep` it sleeps for an hour (a WASI clock wait, which uses no CPU): the host must stop it
//! at its call timeout. On a chunk containing `burn` it computes for a fixed number of steps
//! (about 5 ms of CPU on the project's machine) before it echoes: a call that is CPU-bound
//! but well within its budget. On a chunk containing `nap` it sleeps 200 ms, then echoes: a
//! call that waits longer than a small CPU budget without using it.

use shoal_guest::{ConnInfo, Event, Handler, Next};

struct Spin;

/// The steps of a `burn`: ~5 ms of CPU (release build, this project's machine).
const BURN_STEPS: u64 = 5_000_000;

impl Handler for Spin {
    fn init(_info: ConnInfo) -> Result<(Self, Next), String> {
        Ok((Spin, Next::Continue))
    }

    fn handle(&mut self, event: Event) -> Next {
        if let Event::Data(bytes) = event {
            if bytes.windows(5).any(|w| w == b"sleep") {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
            if bytes.windows(3).any(|w| w == b"nap") {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            if bytes.windows(4).any(|w| w == b"burn") {
                let mut counter = 0u64;
                for step in 0..BURN_STEPS {
                    counter = std::hint::black_box(counter.wrapping_mul(31).wrapping_add(step));
                }
                std::hint::black_box(counter);
            }
            if bytes.windows(4).any(|w| w == b"spin") {
                let mut counter = 0u64;
                loop {
                    counter = std::hint::black_box(counter.wrapping_add(1));
                }
            }
            if shoal_guest::send(&bytes).is_err() {
                return Next::Close;
            }
        }
        Next::Continue
    }
}

shoal_guest::export_handler!(Spin);
