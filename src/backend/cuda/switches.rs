//! Place in the flow: backend::cuda, beside it: the environment switches `launch` and `graph` read.
//! The CUDA backend's environment switches (fallbacks and A/B aids: QWEN_FUSE, QWEN_PDL,
//! QWEN_CUDA_GRAPH, QWEN_ATTN, QWEN_SAMPLER). A value that is not one of a switch's choices is said on
//! stderr, once per switch and process, and the default is used: an A/B run must not measure the
//! default while believing it measures something else. (QWEN_GEMV, QWEN_ADEC_SPLIT and QWEN_PROFILE
//! carry numbers and parse them where they are used.)
use std::sync::Mutex;

/// `name`'s value among `choices` (value, meaning); None when unset or not one of them (said on
/// stderr once, with `default` — the words for what the caller then uses).
pub fn choice<T: Copy>(name: &str, choices: &[(&str, T)], default: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    if let Some(&(_, t)) = choices.iter().find(|(c, _)| *c == v.trim()) {
        return Some(t);
    }
    static WARNED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if !warned.iter().any(|w| w == name) {
        warned.push(name.to_string());
        let names: Vec<&str> = choices.iter().map(|(c, _)| *c).collect();
        eprintln!("warning: {name}={v:?} is not one of {}; using {default}", names.join(", "));
    }
    None
}

/// An on/off switch: "1" / "on" and "0" / "off"; unset or anything else (said) is `default`.
pub fn on_off(name: &str, default: bool) -> bool {
    let words = if default { "the default (on)" } else { "the default (off)" };
    choice(name, &[("1", true), ("on", true), ("0", false), ("off", false)], words).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test uses its own variable: tests run in parallel threads of one process.
    #[test]
    fn choices_unset_and_unknown_values() {
        std::env::remove_var("QWEN_TEST_SWITCH_A");
        assert_eq!(choice("QWEN_TEST_SWITCH_A", &[("x", 1), ("y", 2)], "z"), None);
        std::env::set_var("QWEN_TEST_SWITCH_A", " y ");
        assert_eq!(choice("QWEN_TEST_SWITCH_A", &[("x", 1), ("y", 2)], "z"), Some(2));
        std::env::set_var("QWEN_TEST_SWITCH_A", "Y");
        assert_eq!(choice("QWEN_TEST_SWITCH_A", &[("x", 1), ("y", 2)], "z"), None);
    }

    #[test]
    fn on_off_values_and_defaults() {
        let v = "QWEN_TEST_SWITCH_B";
        std::env::remove_var(v);
        assert!(on_off(v, true));
        assert!(!on_off(v, false));
        for (s, want) in [("0", false), ("off", false), ("1", true), ("on", true)] {
            std::env::set_var(v, s);
            assert_eq!(on_off(v, !want), want, "{v}={s}");
        }
        std::env::set_var(v, "no"); // a typo keeps the default either way
        assert!(on_off(v, true));
        assert!(!on_off(v, false));
    }
}
