//! Sliding-window perplexity planning (Press et al. 2021, "Train Short, Test Long", section
//! 2.2; the same loop as Hugging Face's "Perplexity of fixed-length models" guide).
//!
//! A text of `n` tokens is read in windows of at most `context_length` tokens whose ends
//! advance by `stride`. Each window predicts only the tokens not predicted before, each from
//! all the window's tokens before it, so every token `1..n` is scored exactly once (token 0
//! has no context and is never scored), most with at least `context_length − stride` tokens
//! of context.

/// One forward pass of the sliding window: tokens `begin..end` (absolute indices) are the
/// input; the predictions of tokens `score_from..end` are scored (`begin < score_from ≤ end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Window {
    /// First input token.
    pub begin: usize,
    /// One past the last input token.
    pub end: usize,
    /// First scored token; tokens before it are context only.
    pub score_from: usize,
}

impl Window {
    /// Input length, tokens.
    pub fn len(&self) -> usize {
        self.end - self.begin
    }

    /// True when the window has no input token (never produced by [`plan_windows`]).
    pub fn is_empty(&self) -> bool {
        self.end == self.begin
    }

    /// Scored tokens.
    pub fn scored(&self) -> usize {
        self.end - self.score_from
    }
}

/// The windows over a text of `n` tokens: window `i` starts at `i·stride`, ends at
/// `min(i·stride + context_length, n)` and scores the tokens after the previous window's end
/// (the first window scores tokens `1..end`); the last window is the first one that reaches
/// `n`. Empty for `n < 2`.
///
/// Errors (a message naming the value): `context_length < 2`, `stride == 0` or
/// `stride >= context_length` (a window's first token would have no context).
pub fn plan_windows(n: usize, context_length: usize, stride: usize) -> Result<Vec<Window>, String> {
    if context_length < 2 {
        return Err(format!(
            "context_length must be >= 2 (got {context_length})"
        ));
    }
    if stride == 0 || stride >= context_length {
        return Err(format!(
            "stride must be in 1..{context_length} (below context_length, so that every \
             window's first scored token has context; got {stride})"
        ));
    }
    let mut windows = Vec::new();
    if n < 2 {
        return Ok(windows);
    }
    let mut prev_end = 0;
    let mut begin = 0;
    loop {
        let end = (begin + context_length).min(n);
        windows.push(Window {
            begin,
            end,
            score_from: if prev_end == 0 { 1 } else { prev_end },
        });
        if end == n {
            break;
        }
        prev_end = end;
        begin += stride;
    }
    Ok(windows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every token 1..n scored exactly once, token 0 never, each window within
    /// `context_length`, and every scored token has at least `min_context` tokens before it
    /// in its window.
    fn check(n: usize, len: usize, stride: usize) {
        let w = plan_windows(n, len, stride).unwrap();
        let mut hits = vec![0u32; n];
        for x in &w {
            assert!(
                x.len() <= len && x.begin < x.score_from && x.score_from <= x.end,
                "{x:?}"
            );
            for h in &mut hits[x.score_from..x.end] {
                *h += 1;
            }
        }
        if n >= 2 {
            assert_eq!(hits[0], 0);
            assert!(
                hits[1..].iter().all(|&h| h == 1),
                "n {n} len {len} stride {stride}"
            );
            assert_eq!(w.last().unwrap().end, n);
            // Every window after the first gives its scored tokens ≥ len − stride of context.
            for x in &w[1..] {
                if x.len() == len {
                    assert!(x.score_from - x.begin >= len - stride, "{x:?}");
                }
            }
        } else {
            assert!(w.is_empty());
        }
        assert_eq!(
            w.iter().map(Window::scored).sum::<usize>(),
            n.saturating_sub(1)
        );
    }

    #[test]
    fn every_token_scored_once() {
        for n in [0, 1, 2, 3, 10, 100, 1000, 1001] {
            for (len, stride) in [(2, 1), (4, 2), (16, 15), (16, 5), (64, 32), (1024, 512)] {
                check(n, len, stride);
            }
        }
    }

    #[test]
    fn windows_by_hand() {
        // n = 10, length 4, stride 2: [0,4) scores 1..4, [2,6) scores 4..6, [4,8) 6..8,
        // [6,10) 8..10.
        let w = plan_windows(10, 4, 2).unwrap();
        let got: Vec<(usize, usize, usize)> =
            w.iter().map(|x| (x.begin, x.end, x.score_from)).collect();
        assert_eq!(got, vec![(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]);
        // A text shorter than the window: one window scoring 1..n.
        assert_eq!(
            plan_windows(3, 8, 4).unwrap(),
            vec![Window {
                begin: 0,
                end: 3,
                score_from: 1
            }]
        );
        // Window ends advance by the stride, the last one is cut at n.
        let w = plan_windows(9, 4, 3).unwrap();
        let got: Vec<(usize, usize, usize)> =
            w.iter().map(|x| (x.begin, x.end, x.score_from)).collect();
        assert_eq!(got, vec![(0, 4, 1), (3, 7, 4), (6, 9, 7)]);
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(plan_windows(10, 1, 1)
            .unwrap_err()
            .contains("context_length"));
        assert!(plan_windows(10, 4, 0).unwrap_err().contains("stride"));
        assert!(plan_windows(10, 4, 5).unwrap_err().contains("stride"));
        assert!(plan_windows(10, 4, 4).unwrap_err().contains("stride"));
    }
}
