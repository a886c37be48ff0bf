//! Visiting a layer's parameters, written once per layer as the list of its fields
//! ([`params!`](crate::params)), for optimisers, precision changes and saving.

use idlevit_checkpoint::Checkpoint;

use crate::{Param, ParamVisitor, ParamVisitorMut, Result};

/// Something that holds parameters: a [`Param`], a layer, a model, or a container of them.
pub trait Params {
    /// Visits every learnable parameter, in checkpoint order.
    fn visit(&self, f: &mut ParamVisitor<'_>);

    /// Visits every learnable parameter mutably (an optimiser step).
    fn visit_mut(&mut self, f: &mut ParamVisitorMut<'_>);

    /// Visits the saved tensors that are not learned (a batch norm's running statistics).
    fn visit_buffers(&self, _f: &mut ParamVisitor<'_>) {}

    /// Every parameter and buffer under its checkpoint name and stored shape, ready to save
    /// (and to load again).
    fn to_checkpoint(&self) -> Result<Checkpoint> {
        let mut ckpt = Checkpoint::default();
        let mut failure = None;
        let mut save = |p: &Param| match p.stored_value() {
            Ok(value) => ckpt.insert(p.name(), value),
            Err(e) => failure = Some(e),
        };
        self.visit(&mut save);
        self.visit_buffers(&mut save);
        failure.map_or(Ok(ckpt), |e| Err(e.into()))
    }
}

impl Params for Param {
    fn visit(&self, f: &mut ParamVisitor<'_>) {
        f(self);
    }

    fn visit_mut(&mut self, f: &mut ParamVisitorMut<'_>) {
        f(self);
    }
}

/// Implements [`Params`] for a container by visiting its elements in order.
macro_rules! params_of_elements {
    ($([$($generics:tt)*] $container:ty),+) => {$(
        impl<$($generics)*> Params for $container where T: Params {
            fn visit(&self, f: &mut ParamVisitor<'_>) {
                self.iter().for_each(|t| t.visit(f));
            }

            fn visit_mut(&mut self, f: &mut ParamVisitorMut<'_>) {
                self.iter_mut().for_each(|t| t.visit_mut(f));
            }

            fn visit_buffers(&self, f: &mut ParamVisitor<'_>) {
                self.iter().for_each(|t| t.visit_buffers(f));
            }
        }
    )+};
}

params_of_elements!([T] Option<T>, [T] Vec<T>, [T, const N: usize] [T; N]);

impl<A: Params, B: Params> Params for (A, B) {
    fn visit(&self, f: &mut ParamVisitor<'_>) {
        self.0.visit(f);
        self.1.visit(f);
    }

    fn visit_mut(&mut self, f: &mut ParamVisitorMut<'_>) {
        self.0.visit_mut(f);
        self.1.visit_mut(f);
    }

    fn visit_buffers(&self, f: &mut ParamVisitor<'_>) {
        self.0.visit_buffers(f);
        self.1.visit_buffers(f);
    }
}

/// Implements [`Params`] for a layer or model from the fields holding its parameters, in
/// checkpoint order, and gives it inherent `visit_params` and `visit_params_mut` (so callers
/// need not import the trait): `params!(Linear: weight, bias);`.
#[macro_export]
macro_rules! params {
    ($ty:ty: $($field:ident),+ $(,)?) => {
        impl $ty {
            /// Visits every learnable parameter, in checkpoint order.
            pub fn visit_params(&self, f: &mut $crate::ParamVisitor<'_>) {
                $($crate::Params::visit(&self.$field, f);)+
            }

            /// Visits every learnable parameter mutably (an optimiser step).
            pub fn visit_params_mut(&mut self, f: &mut $crate::ParamVisitorMut<'_>) {
                $($crate::Params::visit_mut(&mut self.$field, f);)+
            }
        }

        impl $crate::Params for $ty {
            fn visit(&self, f: &mut $crate::ParamVisitor<'_>) {
                self.visit_params(f);
            }

            fn visit_mut(&mut self, f: &mut $crate::ParamVisitorMut<'_>) {
                self.visit_params_mut(f);
            }

            fn visit_buffers(&self, f: &mut $crate::ParamVisitor<'_>) {
                $($crate::Params::visit_buffers(&self.$field, f);)+
            }
        }
    };
}
