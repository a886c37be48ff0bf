//! `scripts/server-bench.sh` reads `idlevit bench --bf16` output with awk and sed; this runs it
//! on the built binary so that a change to the bench's wording cannot silently empty the table.

use std::path::PathBuf;
use std::process::Command;

/// The table rows of a run of the script: the lines that start with `| ` and a digit.
fn table_rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .filter(|l| l.starts_with("| ") && l[2..].starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn the_server_sweep_fills_our_columns() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let run = Command::new("bash")
        .arg(root.join("scripts/server-bench.sh"))
        .args(["--model", "deit_tiny", "--threads", "1", "--batches", "1"])
        .args(["--binary", env!("CARGO_BIN_EXE_idlevit")])
        // No torch behind this "python": the PyTorch columns stay empty.
        .args(["--python", "false"])
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    let rows = table_rows(&stdout);
    assert_eq!(rows.len(), 1, "{stdout}");
    let row = &rows[0];
    assert_eq!(row.len(), 9, "{row:?}");
    assert_eq!(row[0], "1, 1");
    assert!(
        ["amx", "avx512-bf16", "portable"].contains(&row[1].as_str()),
        "{row:?}"
    );
    // Our four speeds, then the idle speed-up per GMAC ratio in both precisions.
    for cell in &row[2..6] {
        let ips: f64 = cell
            .parse()
            .unwrap_or_else(|_| panic!("{cell:?} in {row:?}"));
        assert!(ips > 0.0, "{row:?}");
    }
    let per_gmac: Vec<f64> = row[6]
        .split(", ")
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{v:?} in {row:?}")))
        .collect();
    assert_eq!(per_gmac.len(), 2, "{row:?}");
    assert!(per_gmac.iter().all(|&v| v > 0.2 && v < 2.0), "{row:?}");
    assert_eq!(&row[7..], ["-", "-"], "{row:?}");
    // The embedded digits model in both precisions: 97.55% in f32, and bf16 about the same.
    let accuracy = stdout
        .lines()
        .find(|l| l.starts_with("Embedded digits model"))
        .unwrap_or_else(|| panic!("no accuracy line:\n{stdout}"));
    let top1: Vec<f64> = accuracy
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').strip_suffix('%')?.parse().ok())
        .collect();
    assert_eq!(top1.len(), 2, "{accuracy}");
    assert_eq!(top1[0], 97.55, "{accuracy}");
    assert!((top1[1] - top1[0]).abs() <= 1.0, "{accuracy}");
}
