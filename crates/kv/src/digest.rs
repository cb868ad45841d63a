//! The state digest: equal states have equal digests, and a different state
//! has a different digest but with negligible probability.
//!
//! Each entry (key, version, value) is hashed with SHA-256; the first 128
//! bits of those hashes are summed modulo 2^128, so the sum does not depend
//! on the order in which entries were written and the server updates it in
//! constant time on every write. The digest is the SHA-256 of that sum, the
//! number of entries and the version counter, in lowercase hex.

/// SHA-256 (FIPS 180-4), enough of it for the digest.
#[derive(Clone)]
pub struct Sha256 {
    state: [u32; 8],
    block: [u8; 64],
    filled: usize,
    length: u64,
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    /// A fresh hash.
    pub fn new() -> Self {
        Sha256 {
            state: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            block: [0; 64],
            filled: 0,
            length: 0,
        }
    }

    /// Feed bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u64);
        while !data.is_empty() {
            let n = (64 - self.filled).min(data.len());
            self.block[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == 64 {
                let block = self.block;
                self.compress(&block);
                self.filled = 0;
            }
        }
    }

    /// The 32-byte hash.
    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.length.wrapping_mul(8);
        self.update(&[0x80]);
        while self.filled != 56 {
            self.update(&[0]);
        }
        self.update(&bits.to_be_bytes());
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    fn compress(&mut self, block: &[u8; 64]) {
        let mut w = [0u32; 64];
        for (i, chunk) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }
}

/// The contribution of one entry to the sum: the first 128 bits of
/// SHA-256(len(key) ‖ key ‖ version ‖ len(value) ‖ value), lengths and version
/// as 8-byte little-endian numbers.
pub fn entry_hash(key: &[u8], version: u64, value: &[u8]) -> u128 {
    let mut h = Sha256::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(&version.to_le_bytes());
    h.update(&(value.len() as u64).to_le_bytes());
    h.update(value);
    let out = h.finish();
    let mut first = [0u8; 16];
    first.copy_from_slice(&out[..16]);
    u128::from_le_bytes(first)
}

/// An order-independent digest of a set of entries, updated one entry at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateDigest {
    sum: u128,
    entries: u64,
}

impl StateDigest {
    /// The digest of the empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count an entry in.
    pub fn add(&mut self, key: &[u8], version: u64, value: &[u8]) {
        self.add_hash(entry_hash(key, version, value));
    }

    /// Count an entry in by its [`entry_hash`].
    pub fn add_hash(&mut self, hash: u128) {
        self.sum = self.sum.wrapping_add(hash);
        self.entries += 1;
    }

    /// Take an entry out by its [`entry_hash`] (it must have been added).
    pub fn remove_hash(&mut self, hash: u128) {
        self.sum = self.sum.wrapping_sub(hash);
        self.entries -= 1;
    }

    /// The number of entries counted in.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The digest of these entries with this version counter, as the server
    /// answers `DIGEST`: 64 lowercase hex digits.
    pub fn hex(&self, counter: u64) -> String {
        let mut h = Sha256::new();
        h.update(b"ferry-kv state v1");
        h.update(&self.sum.to_le_bytes());
        h.update(&self.entries.to_le_bytes());
        h.update(&counter.to_le_bytes());
        hex(&h.finish())
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(data);
        hex(&h.finish())
    }

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            sha(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        let mut h = Sha256::new();
        for _ in 0..1000 {
            h.update(&[b'a'; 1000]);
        }
        assert_eq!(
            hex(&h.finish()),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn digest_is_order_independent_and_sensitive() {
        let mut a = StateDigest::new();
        a.add(b"x", 1, b"1");
        a.add(b"y", 2, b"2");
        let mut b = StateDigest::new();
        b.add(b"y", 2, b"2");
        b.add(b"x", 1, b"1");
        assert_eq!(a.hex(2), b.hex(2));
        assert_ne!(a.hex(2), b.hex(3));
        let mut c = StateDigest::new();
        c.add(b"x", 1, b"1");
        c.add(b"y", 3, b"2");
        assert_ne!(a.hex(3), c.hex(3));
        // Moving bytes between key and value changes the entry.
        assert_ne!(entry_hash(b"ab", 1, b"c"), entry_hash(b"a", 1, b"bc"));
        let h = entry_hash(b"y", 2, b"2");
        a.remove_hash(h);
        let mut d = StateDigest::new();
        d.add(b"x", 1, b"1");
        assert_eq!(a, d);
    }
}
