//! Strided matrix views over `f32` slices, and the checks that make GEMM on them sound.

use crate::KernelError;

/// Read-only strided matrix: element (i, j) is `data[i * row_stride + j * col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    /// Backing storage; must reach the last element the strides address.
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance in elements between (i, j) and (i + 1, j).
    pub row_stride: usize,
    /// Distance in elements between (i, j) and (i, j + 1).
    pub col_stride: usize,
}

/// Mutable strided matrix: element (i, j) is `data[i * row_stride + j * col_stride]`.
#[derive(Debug)]
pub struct MatMut<'a> {
    /// Backing storage; must reach the last element the strides address.
    pub data: &'a mut [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance in elements between (i, j) and (i + 1, j).
    pub row_stride: usize,
    /// Distance in elements between (i, j) and (i, j + 1).
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A contiguous row-major `rows x cols` view of `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, as a view of the same storage.
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Element (i, j), or `None` outside the matrix or the slice.
    pub fn get(&self, i: usize, j: usize) -> Option<f32> {
        if i >= self.rows || j >= self.cols {
            return None;
        }
        self.data
            .get(i * self.row_stride + j * self.col_stride)
            .copied()
    }

    /// Rows `start..end`; the caller has checked the view is in bounds and the range is in it.
    pub(crate) fn rows_range(self, start: usize, end: usize) -> Self {
        let offset = if start < end {
            start * self.row_stride
        } else {
            0
        };
        Self {
            data: &self.data[offset..],
            rows: end - start,
            ..self
        }
    }

    /// Columns `start..end`; the caller has checked as for [`Self::rows_range`].
    pub(crate) fn cols_range(self, start: usize, end: usize) -> Self {
        let offset = if start < end {
            start * self.col_stride
        } else {
            0
        };
        Self {
            data: &self.data[offset..],
            cols: end - start,
            ..self
        }
    }
}

impl<'a> MatMut<'a> {
    /// A contiguous row-major `rows x cols` view of `data`.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// Element (i, j), or `None` outside the matrix or the slice.
    pub fn get(&self, i: usize, j: usize) -> Option<f32> {
        if i >= self.rows || j >= self.cols {
            return None;
        }
        self.data
            .get(i * self.row_stride + j * self.col_stride)
            .copied()
    }
}

/// Number of slice elements a `rows x cols` layout addresses, or `None` on overflow.
pub(crate) fn extent(
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1)
        .checked_mul(row_stride)?
        .checked_add((cols - 1).checked_mul(col_stride)?)?
        .checked_add(1)
}

fn check_bounds(
    op: &'static str,
    operand: &'static str,
    (rows, cols, row_stride, col_stride): (usize, usize, usize, usize),
    found: usize,
) -> Result<(), KernelError> {
    match extent(rows, cols, row_stride, col_stride) {
        Some(needed) if needed <= found => Ok(()),
        needed => Err(KernelError::OutOfBounds {
            op,
            operand,
            rows,
            cols,
            row_stride,
            col_stride,
            needed: needed.unwrap_or(usize::MAX),
            found,
        }),
    }
}

/// Whether the output's rows (or columns) follow one another without sharing an element.
///
/// Parallel GEMM writes disjoint blocks of C, so this is what makes it free of data races; the
/// same property lets the blocks be split off the slice safely.
fn lays_out_without_overlap(
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    match (rows > 1, cols > 1) {
        (false, false) => true,
        (true, false) => row_stride > 0,
        (false, true) => col_stride > 0,
        (true, true) => {
            let (small, small_len, big) = if row_stride <= col_stride {
                (row_stride, rows, col_stride)
            } else {
                (col_stride, cols, row_stride)
            };
            small > 0 && small.checked_mul(small_len).is_some_and(|span| big >= span)
        }
    }
}

/// Checks `c = a · b` for consistent shapes, in-bounds strides and a race-free output.
pub(crate) fn check_product(
    op: &'static str,
    c: &MatMut<'_>,
    a: &MatRef<'_>,
    b: &MatRef<'_>,
) -> Result<(), KernelError> {
    if a.cols != b.rows {
        return Err(KernelError::InnerDimMismatch {
            op,
            a_rows: a.rows,
            a_cols: a.cols,
            b_rows: b.rows,
            b_cols: b.cols,
        });
    }
    if c.rows != a.rows || c.cols != b.cols {
        return Err(KernelError::OutputShape {
            op,
            expected_rows: a.rows,
            expected_cols: b.cols,
            rows: c.rows,
            cols: c.cols,
        });
    }
    check_bounds(
        op,
        "a",
        (a.rows, a.cols, a.row_stride, a.col_stride),
        a.data.len(),
    )?;
    check_bounds(
        op,
        "b",
        (b.rows, b.cols, b.row_stride, b.col_stride),
        b.data.len(),
    )?;
    check_bounds(
        op,
        "c",
        (c.rows, c.cols, c.row_stride, c.col_stride),
        c.data.len(),
    )?;
    if !lays_out_without_overlap(c.rows, c.cols, c.row_stride, c.col_stride) {
        return Err(KernelError::OverlappingOutput {
            op,
            rows: c.rows,
            cols: c.cols,
            row_stride: c.row_stride,
            col_stride: c.col_stride,
        });
    }
    Ok(())
}

/// Strides the GEMM libraries receive: a dimension of length one gets the stride a dense layout
/// would give it, so arbitrary (unused) strides never reach their pointer arithmetic or their
/// layout heuristics.
pub(crate) fn normalized_strides(
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
) -> (isize, isize) {
    let (rs, cs) = match (rows > 1, cols > 1) {
        (false, false) => (1, 1),
        (false, true) => ((cols - 1) * col_stride + 1, col_stride),
        (true, false) => (row_stride, (rows - 1) * row_stride + 1),
        (true, true) => (row_stride, col_stride),
    };
    // Both are at most the extent of an in-bounds view, hence at most `isize::MAX`.
    (rs as isize, cs as isize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_rules() {
        assert!(lays_out_without_overlap(3, 4, 4, 1));
        assert!(lays_out_without_overlap(3, 4, 1, 3));
        assert!(lays_out_without_overlap(3, 4, 9, 2));
        assert!(!lays_out_without_overlap(3, 4, 3, 1), "rows overlap");
        assert!(!lays_out_without_overlap(2, 2, 2, 3), "rows interleave");
        assert!(!lays_out_without_overlap(3, 1, 0, 1));
        assert!(lays_out_without_overlap(1, 1, 0, 0));
        assert!(lays_out_without_overlap(0, 5, 0, 0));
        assert!(lays_out_without_overlap(1, 5, 0, 1));
        assert!(!lays_out_without_overlap(1, 5, 0, 0));
        assert!(!lays_out_without_overlap(
            2,
            2,
            usize::MAX,
            usize::MAX / 2 + 1
        ));
    }

    #[test]
    fn extent_overflow_is_none() {
        assert_eq!(extent(2, 2, usize::MAX, 1), None);
        assert_eq!(extent(0, 7, usize::MAX, usize::MAX), Some(0));
        assert_eq!(extent(2, 3, 3, 1), Some(6));
    }
}
