//! Property tests of the config parser on hostile input (bounded case
//! counts, seconds in `scripts/test`): any text, and the good file with any
//! value put in place of one of its values, gives a config or an error
//! naming the file, never a panic.

use proptest::prelude::*;

use super::{GOOD, parse};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// A TOML value a hostile or careless operator might write.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        ".{0,30}".prop_map(|s| format!("{s:?}")),
        "[0-9]{1,25}(ns|ms|s|m|h|d| parsecs)?".prop_map(|s| format!("{s:?}")),
        Just("\"\"".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("{ env = \"\" }".to_owned()),
        Just("{ file = \"/dev/zero\" }".to_owned()),
        Just("\"18446744073709551616s\"".to_owned()),
        Just("\"999999999999999999999d\"".to_owned()),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_text(text in "(.|\n){0,300}") {
        if let Err(e) = parse(&text) {
            prop_assert!(e.to_string().contains("pgdr.toml"), "{}", e);
        }
    }

    /// The good config with the value of its `n`th assignment replaced.
    #[test]
    fn any_value_for_any_key(n in 0usize..40, v in value()) {
        let lines: Vec<&str> = GOOD.lines().collect();
        let assignments: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].contains(" = ")).collect();
        let i = assignments[n % assignments.len()];
        let key = lines[i].split(" = ").next().unwrap_or("");
        let mut text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        text[i] = format!("{key} = {v}");
        if let Err(e) = parse(&text.join("\n")) {
            prop_assert!(e.to_string().contains("pgdr.toml"), "{}", e);
        }
    }
}
