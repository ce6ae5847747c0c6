//! String constraints: equalities with literals and `like` patterns.
//!
//! Deciding arbitrary combinations of glob patterns exactly is not needed: the checker
//! reports a conflict only when one is certain (a witness search first, then sound
//! inclusion and prefix/suffix tests), and otherwise lets the candidate through to replay.

use super::super::encode::Pat;

/// Cedar's `like`: `*` matches any sequence of characters.
///
/// The usual greedy glob match: on a mismatch, the last `*` absorbs one more character and
/// matching resumes after it. With `*` as the only wildcard, retrying from the last `*` alone
/// is complete (an earlier `*` could only absorb what the later one can). No allocation: this
/// runs for every string term in every theory check.
pub(crate) fn matches(pat: &[Pat], s: &str) -> bool {
    let mut pi = 0usize;
    let mut rest = s;
    // The pattern index after the last `*` seen, and the text it has not absorbed yet.
    let mut star: Option<(usize, &str)> = None;
    loop {
        match pat.get(pi) {
            Some(Pat::Star) => {
                pi += 1;
                star = Some((pi, rest));
                continue;
            }
            Some(Pat::Char(c)) => {
                if let Some(after) = rest.strip_prefix(*c) {
                    pi += 1;
                    rest = after;
                    continue;
                }
            }
            None if rest.is_empty() => return true,
            None => {}
        }
        let Some((after_star, absorbed_from)) = star else {
            return false;
        };
        let mut chars = absorbed_from.chars();
        if chars.next().is_none() {
            return false;
        }
        let retry = chars.as_str();
        star = Some((after_star, retry));
        pi = after_star;
        rest = retry;
    }
}

/// A sufficient test for `L(p) ⊆ L(q)`: `q` matches `p` when each `*` of `p` may only be
/// absorbed by a `*` of `q`.
pub(crate) fn subsumed(p: &[Pat], q: &[Pat]) -> bool {
    // dp[j]: q prefix matches p[..j]
    let mut dp = vec![false; p.len() + 1];
    dp[0] = true;
    for qe in q {
        let mut next = vec![false; p.len() + 1];
        match qe {
            Pat::Star => {
                let mut any = false;
                for j in 0..=p.len() {
                    any = any || dp.get(j).copied().unwrap_or(false);
                    if let Some(n) = next.get_mut(j) {
                        *n = any;
                    }
                }
            }
            Pat::Char(c) => {
                for j in 1..=p.len() {
                    let prev = dp.get(j - 1).copied().unwrap_or(false);
                    let same = p.get(j - 1) == Some(&Pat::Char(*c));
                    if let Some(n) = next.get_mut(j) {
                        *n = prev && same;
                    }
                }
            }
        }
        dp = next;
    }
    dp.get(p.len()).copied().unwrap_or(false)
}

fn prefix(p: &[Pat]) -> String {
    p.iter()
        .map_while(|e| match e {
            Pat::Char(c) => Some(*c),
            Pat::Star => None,
        })
        .collect()
}

fn suffix(p: &[Pat]) -> String {
    let mut rev: Vec<char> = p
        .iter()
        .rev()
        .map_while(|e| match e {
            Pat::Char(c) => Some(*c),
            Pat::Star => None,
        })
        .collect();
    rev.reverse();
    rev.into_iter().collect()
}

fn fill(p: &[Pat], filler: &str) -> String {
    p.iter()
        .map(|e| match e {
            Pat::Char(c) => c.to_string(),
            Pat::Star => filler.to_owned(),
        })
        .collect()
}

/// The constraints on one string term.
#[derive(Default)]
pub(crate) struct StrConstraints<'a> {
    pub(crate) eq: Vec<&'a str>,
    pub(crate) ne: Vec<&'a str>,
    pub(crate) like: Vec<&'a [Pat]>,
    pub(crate) unlike: Vec<&'a [Pat]>,
}

impl StrConstraints<'_> {
    fn accepts(&self, s: &str) -> bool {
        self.eq.iter().all(|e| *e == s)
            && !self.ne.contains(&s)
            && self.like.iter().all(|p| matches(p, s))
            && !self.unlike.iter().any(|p| matches(p, s))
    }

    /// Whether the constraints may be satisfiable (false only when certainly not).
    ///
    /// With an equality the only candidate is tried. Otherwise only the sound refutations
    /// below can say no: a witness search could only ever confirm a yes, so it is left to the
    /// model builder ([`string_witness`]), which needs an actual string.
    pub(crate) fn consistent(&self) -> bool {
        if let Some(first) = self.eq.first() {
            return self.accepts(first);
        }
        for p in &self.like {
            if self.unlike.iter().any(|q| subsumed(p, q)) {
                return false;
            }
        }
        for (i, p) in self.like.iter().enumerate() {
            for q in self.like.iter().skip(i + 1) {
                let (pp, qp) = (prefix(p), prefix(q));
                let (ps, qs) = (suffix(p), suffix(q));
                if !(pp.starts_with(&qp) || qp.starts_with(&pp)) || !(ps.ends_with(&qs) || qs.ends_with(&ps)) {
                    return false;
                }
            }
        }
        true
    }
}

/// A string satisfying the constraints, found by trying likely candidates.
pub(crate) fn string_witness(c: &StrConstraints<'_>) -> Option<String> {
    if let Some(e) = c.eq.first() {
        return c.accepts(e).then(|| (*e).to_owned());
    }
    let mut candidates: Vec<String> = Vec::new();
    let longest_prefix = c.like.iter().map(|p| prefix(p)).max_by_key(String::len);
    let longest_suffix = c.like.iter().map(|p| suffix(p)).max_by_key(String::len);
    for filler in ["", "x", "/x/", "-x-"] {
        for p in &c.like {
            candidates.push(fill(p, filler));
        }
        if let (Some(pre), Some(suf)) = (&longest_prefix, &longest_suffix) {
            candidates.push(format!("{pre}{filler}{suf}"));
        }
        for q in &c.unlike {
            candidates.push(format!("{filler}{}", fill(q, "")));
        }
        candidates.push(format!("cx{filler}"));
    }
    for n in &c.ne {
        candidates.push(format!("{n}x"));
    }
    candidates.into_iter().find(|s| c.accepts(s))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// A `like` pattern written with `*` as the wildcard (no escapes).
    pub(crate) fn pat(s: &str) -> Vec<Pat> {
        s.chars()
            .map(|c| if c == '*' { Pat::Star } else { Pat::Char(c) })
            .collect()
    }

    #[test]
    fn glob_matching() {
        assert!(matches(&pat("src/*.rs"), "src/main.rs"));
        assert!(matches(&pat("*"), ""));
        assert!(!matches(&pat("src/*"), "docs/a"));
        assert!(matches(&pat("a*b*c"), "aXbYc"));
        assert!(matches(&pat("*é*"), "caféx"));
        assert!(!matches(&pat("a*b"), "aba_"));
    }

    /// The obvious recursive definition of `like`, as a reference.
    fn reference(pat: &[Pat], s: &[char]) -> bool {
        match pat.split_first() {
            None => s.is_empty(),
            Some((Pat::Star, rest)) => (0..=s.len()).any(|k| reference(rest, &s[k..])),
            Some((Pat::Char(c), rest)) => s.first() == Some(c) && reference(rest, &s[1..]),
        }
    }

    fn words(alphabet: &[char], max: usize) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..max {
            last = last
                .iter()
                .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                .collect();
            out.extend(last.iter().cloned());
        }
        out
    }

    #[test]
    fn glob_matching_agrees_with_the_definition() {
        for p in words(&['a', 'b', '*'], 5) {
            let p = pat(&p);
            for s in words(&['a', 'b'], 5) {
                let chars: Vec<char> = s.chars().collect();
                assert_eq!(matches(&p, &s), reference(&p, &chars), "{p:?} on {s:?}");
            }
        }
    }

    #[test]
    fn inclusion_is_sound() {
        assert!(subsumed(&pat("src/lib/*"), &pat("src/*")));
        assert!(subsumed(&pat("a*"), &pat("*a*")));
        assert!(!subsumed(&pat("src/*"), &pat("src/lib/*")));
        assert!(!subsumed(&pat("*"), &pat("a*")));
    }

    #[test]
    fn witnesses_satisfy_constraints() {
        let like = pat("repo/*");
        let unlike = pat("repo/secret*");
        let c = StrConstraints {
            like: vec![&like],
            unlike: vec![&unlike],
            ..Default::default()
        };
        let w = string_witness(&c).unwrap();
        assert!(matches(&like, &w) && !matches(&unlike, &w));
        let narrow = pat("repo/secret/*");
        let c = StrConstraints {
            like: vec![&narrow],
            unlike: vec![&unlike],
            ..Default::default()
        };
        assert!(!c.consistent());
    }
}
