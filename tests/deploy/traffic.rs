//! Traffic for the deployment tests: requests, and a random order for them.

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;

/// A `GET` for `url`, carrying `x-session` when there is a session.
pub fn request(url: &str, session: Option<&str>) -> Request<Empty<Bytes>> {
    let mut request = Request::get(url);
    if let Some(session) = session {
        request = request.header("x-session", session);
    }
    request.body(Empty::new()).unwrap()
}

/// xorshift64*, seeded from the clock or `SCALING_SEED` (printed, so that
/// a failing order can be replayed).
pub struct Rng(u64);

impl Rng {
    pub fn from_env() -> Self {
        let seed = std::env::var("SCALING_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                now.unwrap().as_nanos() as u64 | 1
            });
        println!("SCALING_SEED={seed}");
        Self(seed)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }

    /// Each of `sessions` sessions `times` times, shuffled (Fisher-Yates).
    pub fn schedule(&mut self, sessions: usize, times: usize) -> Vec<usize> {
        let mut schedule: Vec<usize> = (0..sessions).flat_map(|s| [s].repeat(times)).collect();
        for i in (1..schedule.len()).rev() {
            schedule.swap(i, self.below(i + 1));
        }
        schedule
    }
}
