//! Deterministic mutations of a file's bytes or text (SplitMix64 from a fixed seed), as a
//! fuzzer makes them: each mutant is reproduced from its seed alone.

/// A small deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes a fuzzer likes to write: edges of signed and unsigned integers, LEB128 continuation.
const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x40, 0x3f, 0xc0];

/// One to four byte-level mutations of `bytes` (never empty), and what was done.
pub fn mutate_bytes(bytes: &[u8], seed: u64) -> (Vec<u8>, String) {
    let mut rng = Rng::new(seed);
    let mut out = bytes.to_vec();
    let mut done = Vec::new();
    for _ in 0..=rng.below(4) {
        if out.is_empty() {
            out.push(0);
        }
        let at = rng.below(out.len());
        match rng.below(7) {
            0 => {
                let bit = rng.below(8);
                out[at] ^= 1 << bit;
                done.push(format!("flip bit {bit} at {at}"));
            }
            1 => {
                let value = *rng.pick(&INTERESTING);
                out[at] = value;
                done.push(format!("set {at} to {value:#04x}"));
            }
            2 => {
                out.truncate(at.max(1));
                done.push(format!("truncate to {}", at.max(1)));
            }
            3 => {
                let len = (1 + rng.below(64)).min(out.len() - at);
                out.drain(at..at + len);
                done.push(format!("delete {len} at {at}"));
            }
            4 => {
                let len = (1 + rng.below(256)).min(out.len() - at);
                let copy = out[at..at + len].to_vec();
                let to = rng.below(out.len());
                out.splice(to..to, copy);
                done.push(format!("copy {len} from {at} to {to}"));
            }
            5 => {
                let len = 1 + rng.below(16);
                let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                out.splice(at..at, junk);
                done.push(format!("insert {len} random at {at}"));
            }
            _ => {
                // A LEB128 length or index made huge: the classic way to ask for gigabytes.
                let huge = [0xff, 0xff, 0xff, 0xff, 0x0f];
                let end = (at + huge.len()).min(out.len());
                out.splice(at..end, huge);
                done.push(format!("huge LEB128 at {at}"));
            }
        }
    }
    (out, done.join(", "))
}

/// Values that break a config file in every way a person or a script could.
const HOSTILE_VALUES: [&str; 25] = [
    "0",
    "-1",
    "1",
    "99999999999",
    "18446744073709551616",
    "9223372036854775807",
    "1e309",
    "nan",
    "inf",
    "1.5",
    "true",
    "\"\"",
    "\"0s\"",
    "\"0\"",
    "\"1B\"",
    "\"99999999999h\"",
    "\"18446744073709551615s\"",
    "\"4GiB\"",
    "\"64KiB\"",
    "\"17179869184GiB\"",
    "\"1.5KiB\"",
    "\"-5s\"",
    "[]",
    "{}",
    "\"127.0.0.1:99999\"",
];

/// One to three line-level mutations of a TOML text: a value replaced by a hostile one, a
/// line deleted, duplicated or moved, a byte flipped.
pub fn mutate_text(text: &str, seed: u64) -> (String, String) {
    let mut rng = Rng::new(seed);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut done = Vec::new();
    for _ in 0..=rng.below(3) {
        if lines.is_empty() {
            break;
        }
        let at = rng.below(lines.len());
        match rng.below(6) {
            0 | 1 => {
                // Most often: keep a setting's key, replace its value.
                let settings: Vec<usize> = (0..lines.len())
                    .filter(|&i| lines[i].contains('=') && !lines[i].trim_start().starts_with('#'))
                    .collect();
                if settings.is_empty() {
                    continue;
                }
                let at = *rng.pick(&settings);
                let line = &lines[at];
                let eq = line.find('=').unwrap_or(0);
                let value = *rng.pick(&HOSTILE_VALUES);
                let key = line[..eq].to_string();
                lines[at] = format!("{key}= {value}");
                done.push(format!("line {}: {}= {value}", at + 1, key.trim()));
            }
            2 => {
                lines.remove(at);
                done.push(format!("delete line {}", at + 1));
            }
            3 => {
                let copy = lines[at].clone();
                lines.insert(at, copy);
                done.push(format!("duplicate line {}", at + 1));
            }
            4 => {
                let line = lines.remove(at);
                let to = rng.below(lines.len() + 1);
                lines.insert(to, line);
                done.push(format!("move line {} to {}", at + 1, to + 1));
            }
            _ => {
                let mut bytes = lines[at].clone().into_bytes();
                if !bytes.is_empty() {
                    let i = rng.below(bytes.len());
                    bytes[i] ^= 1 << rng.below(7);
                }
                lines[at] = String::from_utf8_lossy(&bytes).into_owned();
                done.push(format!("flip a bit in line {}", at + 1));
            }
        }
    }
    (lines.join("\n"), done.join(", "))
}
