//! `idlevit bench`'s memory figures: reported on Linux, and flat across repeated runs (the
//! forward pass keeps nothing from one run to the next).

use idlevit_train::bench::bench;
use idlevit_zoo::{ZooConfig, ZooModel};

#[test]
fn repeated_runs_do_not_grow_the_process() {
    let config = ZooConfig::named("deit_tiny").unwrap();
    let model = ZooModel::random(&config, 0).unwrap();
    let report = bench(&[&model], config.img_size(), 4, 1, 8).unwrap();
    let Some(memory) = report.memory else {
        if cfg!(target_os = "linux") {
            panic!("Linux reports resident memory");
        }
        return;
    };
    const MIB: u64 = 1024 * 1024;
    assert!(memory.peak >= memory.after_runs && memory.after_warmup > 0);
    // Were each run to keep its activations (about 100 MiB at this size), eight runs would
    // add far more than this.
    assert!(
        memory.after_runs <= memory.after_warmup + 32 * MIB,
        "resident memory grew from {} to {} bytes over 8 runs",
        memory.after_warmup,
        memory.after_runs
    );
}
