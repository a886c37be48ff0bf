//! The command line's conventions: choices that clap checks and lists, and the model
//! selected by one flag at most.

use std::process::{Command, Output};

fn idlevit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idlevit"))
        .args(args)
        .args(["--threads", "2"])
        .output()
        .expect("the idlevit binary runs")
}

#[test]
fn help_lists_every_choice_and_bad_choices_are_refused_by_name() {
    for (command, listed) in [
        ("logits", "[possible values: dense, idle, masked]"),
        ("logits", "[possible values: idle, prune, evit]"),
        ("eval", "[possible values: dense, idle, masked]"),
        ("bench", "[possible values: idle, prune, evit]"),
        ("flops", "[possible values: idle, prune, evit]"),
        ("loss", "[possible values: both, inter, intra, none]"),
        ("finetune", "[possible values: both, inter, intra, none]"),
        ("finetune", "[possible values: paper, release]"),
    ] {
        let out = idlevit(&[command, "-h"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && help.contains(listed),
            "{command}: {help}"
        );
    }
    for (flag, value, listed) in [
        ("--policy", "topk", "idle, prune, evit"),
        ("--mode", "sparse", "dense, idle, masked"),
    ] {
        let out = idlevit(&["logits", "--model", "deit_tiny", flag, value]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("invalid value '{value}' for '{flag}"))
                && stderr.contains(listed),
            "{stderr}"
        );
    }
}

#[test]
fn model_and_config_together_are_refused_before_anything_runs() {
    let out = idlevit(&["flops", "--model", "deit_small", "--config", "missing.json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'--model <NAME>' cannot be used with '--config <CFG.json>'")
            || stderr.contains("'--config <CFG.json>' cannot be used with '--model <NAME>'"),
        "{stderr}"
    );
    // Neither is still refused, when the command runs (a hub snapshot could have named it).
    let out = idlevit(&["flops"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("give --config CFG.json or --model NAME"),
        "{stderr}"
    );
}
