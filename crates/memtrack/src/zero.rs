//! Is a page all zero? A full checkpoint skips such pages.
//!
//! Pages that were never touched, or only read, are not read at all: the
//! pagemap reports them as absent or as the shared zero page
//! ([`crate::Pagemap::populated`]). This check is for the rest: pages that
//! were written, but with zeros.

/// Bytes tested per step: the OR of a block is computed with vector
/// instructions and tested once, so a non-zero page usually fails in the
/// first block.
const BLOCK: usize = 256;

/// True when every byte of `bytes` is zero.
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(BLOCK);
    for block in &mut blocks {
        if let Ok(b) = <&[u8; BLOCK]>::try_from(block) {
            if !block_is_zero(b) {
                return false;
            }
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[inline(always)]
fn block_is_zero(b: &[u8; BLOCK]) -> bool {
    // Reduce as eight-byte words: the compiler turns this into wide ORs.
    let mut acc = 0u64;
    for w in b.chunks_exact(8) {
        if let Ok(w) = <[u8; 8]>::try_from(w) {
            acc |= u64::from_ne_bytes(w);
        }
    }
    acc == 0
}

/// Call `f` with each run `[start, end)` of consecutive non-zero pages of
/// `bytes` (offsets into it), `page` bytes at a time; zero pages split the
/// runs. Lets a checkpoint write each run with one call.
pub fn nonzero_runs(bytes: &[u8], page: usize, mut f: impl FnMut(usize, usize)) {
    if page == 0 {
        return;
    }
    let mut run: Option<usize> = None;
    let mut at = 0usize;
    for p in bytes.chunks(page) {
        let next = at.saturating_add(p.len());
        match (is_zero(p), run) {
            (true, Some(s)) => {
                f(s, at);
                run = None;
            }
            (false, None) => run = Some(at),
            _ => {}
        }
        at = next;
    }
    if let Some(s) = run {
        f(s, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_single_byte_makes_a_page_non_zero() {
        let mut page = [0u8; 4096];
        assert!(is_zero(&page));
        for i in 0..page.len() {
            page[i] = 0x80;
            assert!(!is_zero(&page), "byte {i}");
            page[i] = 0;
        }
        assert!(is_zero(&page[..0]));
        assert!(is_zero(&page[..17]));
        page[4095] = 1;
        assert!(!is_zero(&page[3000..]));
    }

    #[test]
    fn runs_split_at_zero_pages() {
        let mut mem = [0u8; 8 * 16];
        for p in [0usize, 1, 3, 6, 7] {
            mem[p * 16 + 5] = 9;
        }
        let mut runs = [(0usize, 0usize); 8];
        let mut n = 0;
        nonzero_runs(&mem, 16, |s, e| {
            runs[n] = (s, e);
            n += 1;
        });
        assert_eq!(&runs[..n], &[(0, 32), (48, 64), (96, 128)]);
    }
}
