//! A family defined outside the zoo, through its public API alone: its layers, their
//! parameters listed once (`params!`), and one `build` naming every weight. That one tree of
//! names then draws seeded random weights, saves, loads the saved checkpoint back, refuses
//! checkpoints that do not fit, and trains (gradients and optimiser visits by the same names).

use idlevit_autodiff::Tape;
use std::collections::BTreeSet;

use idlevit_checkpoint::Checkpoint;
use idlevit_nn::{
    Backend, Eager, Fused, Init, LayerNorm, Linear, Param, Params, Tensor, WeightSource,
};
use idlevit_zoo::{Family, Result};

/// Flattened images through a linear embedding, a learned per-feature scale, a norm and a
/// bias-free head.
#[derive(Clone, Debug)]
struct Tiny {
    embed: Linear,
    scale: Param,
    norm: LayerNorm,
    head: Linear,
}

idlevit_nn::params!(Tiny: embed, scale, norm, head);

struct TinyConfig {
    inputs: usize,
    width: usize,
    classes: usize,
}

impl Family for Tiny {
    type Config = TinyConfig;

    fn build(src: &mut dyn WeightSource, c: &TinyConfig) -> Result<Self> {
        let scale = Init::Normal {
            mean: 1.0,
            std: 0.1,
        };
        Ok(Self {
            embed: Linear::load(src, "embed", c.inputs, c.width, true)?,
            scale: src.param("scale", &[c.width], scale)?,
            norm: LayerNorm::load(src, "norm", c.width, 1e-6)?,
            head: Linear::load(src, "head", c.width, c.classes, false)?,
        })
    }
}

impl Tiny {
    fn forward<B: Fused>(&self, bk: &B, x: &B::Value) -> idlevit_nn::Result<B::Value> {
        let h = bk.mul(&self.embed.forward(bk, x)?, &bk.param(&self.scale))?;
        self.head.forward(bk, &self.norm.forward(bk, &h)?)
    }
}

const CONFIG: TinyConfig = TinyConfig {
    inputs: 6,
    width: 4,
    classes: 3,
};

fn input() -> Tensor {
    let values = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
    Tensor::from_vec(vec![2, 6], values).unwrap()
}

fn logits(model: &Tiny) -> Vec<f32> {
    model.forward(&Eager, &input()).unwrap().to_vec()
}

#[test]
fn a_seeded_model_saves_and_loads_back() {
    let model = Tiny::random(&CONFIG, 5).unwrap();
    assert_eq!(logits(&model).len(), 6);
    assert_eq!(logits(&Tiny::random(&CONFIG, 5).unwrap()), logits(&model));
    assert_ne!(logits(&Tiny::random(&CONFIG, 6).unwrap()), logits(&model));

    let ckpt = model.to_checkpoint().unwrap();
    let names: Vec<_> = ckpt.iter().map(|(name, _)| name).collect();
    let expected = [
        "embed.bias",
        "embed.weight",
        "head.weight",
        "norm.bias",
        "norm.weight",
        "scale",
    ];
    assert_eq!(names, expected);
    let loaded = Tiny::load(&CONFIG, ckpt).unwrap();
    assert_eq!(logits(&loaded), logits(&model));
}

#[test]
fn checkpoints_that_do_not_fit_are_refused_by_name() {
    let ckpt = Tiny::random(&CONFIG, 1).unwrap().to_checkpoint().unwrap();
    let error = |edit: &dyn Fn(&mut Checkpoint)| {
        let mut ckpt = ckpt.clone();
        edit(&mut ckpt);
        Tiny::load(&CONFIG, ckpt).unwrap_err().to_string()
    };
    let missing = error(&|c| {
        c.remove("scale");
    });
    assert!(missing.contains("scale"), "{missing}");
    let misshaped = error(&|c| c.insert("head.weight", Tensor::zeros(&[3, 5]).unwrap()));
    assert!(
        misshaped.contains("head.weight") && misshaped.contains("[3, 4]"),
        "{misshaped}"
    );
    let unused = error(&|c| c.insert("head.bias", Tensor::zeros(&[3]).unwrap()));
    assert!(unused.contains("head.bias"), "{unused}");
}

#[test]
fn training_sees_every_parameter_by_its_checkpoint_name() {
    let mut model = Tiny::random(&CONFIG, 2).unwrap();
    let tape = Tape::new();
    let y = model.forward(&tape, &tape.constant(input())).unwrap();
    let loss = tape.sum_axis(&tape.mul(&y, &y).unwrap(), 1, false).unwrap();
    let loss = tape.sum_axis(&loss, 0, false).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let graded: BTreeSet<_> = grads.iter().map(|(name, _)| name.to_string()).collect();
    let mut visited = BTreeSet::new();
    model.visit_params(&mut |p| {
        visited.insert(p.name().to_string());
    });
    assert_eq!(graded, visited);

    // One gradient step by name lowers the loss, and the saved weights follow it.
    let before = model.to_checkpoint().unwrap();
    model.visit_params_mut(&mut |p| {
        let g = grads.get(p.name()).unwrap().to_vec();
        let w = p
            .value()
            .to_vec()
            .into_iter()
            .zip(g)
            .map(|(w, g)| w - 0.01 * g);
        let stepped = Tensor::from_vec(p.value().shape().to_vec(), w.collect()).unwrap();
        *p.value_mut() = stepped;
    });
    let total = |m: &Tiny| logits(m).iter().map(|v| v * v).sum::<f32>();
    assert!(total(&model) < total(&Tiny::load(&CONFIG, before).unwrap()));
    let after = model.to_checkpoint().unwrap();
    assert_eq!(
        after.get("scale").unwrap().to_vec(),
        model.scale.value().to_vec()
    );
}
