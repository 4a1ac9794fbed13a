"""Exact incremental occlusion: the maps of :mod:`visualize.occlusion` for a fraction of the work.

An occluding square changes only a box of every layer's output (after Krypton,
Nakandala, Kumar and Papakonstantinou, SIGMOD 2019). The clean image's maps are
computed once; for every square position only the changed box of each layer is
recomputed, batched across positions, from a window cut out of the clean map with the
recomputed values of the layer below spliced in. Nothing is approximated: every
recomputed value is what the full forward pass gives for the occluded image (up to
float32 rounding, well under 1e-4 in the maps), and every value not recomputed is
provably unchanged.

How it is done:

1. :func:`analyse` walks the path from the image to the explained head's logits and
   sorts its layers: *pointwise* ones (normalisation, batch norm in inference mode,
   element-wise activations, dropout), *spatial* ones (conv, fruitcnn's ``Whiten`` (a
   conv with a frozen kernel) and max/average pooling, each a window, a stride and the
   padding before the first row and column), the step
   from maps to a vector (flatten, global average or global max pooling) and the
   vector layers after it. Anything else raises :class:`Unsupported` with the reason
   (the caller then falls back to batched re-inference and says why).
2. :func:`_axis_plan` follows one image axis through the spatial layers for every
   square position (rows and columns are independent): the changed interval of each
   map (the square, then every output whose window reads a changed input; not clipped
   to the map, so sizes depend only on the position modulo the strides) and the input
   window each layer reads to recompute it (its changed interval times the stride,
   plus the window's reach). The input window is cut from the clean map with the
   layer below's recomputed values spliced in, by one gather from the table [clean
   map; recomputed boxes; padding value]; values outside a map are what the layer's
   padding sees (zeros for convs, nothing for 'same' pooling: -inf for max, left out
   of the count for average). A small map whose changed intervals are on average
   longer than the map itself (by ``WHOLE_MARGIN``, 10%) is recomputed whole for every
   position instead, and so is every map after it: the deep end of a network on small
   maps (the photo recipe's 4x4 maps, reached by boxes of 4-7 rows) then runs as plain
   batched inference on exactly the cells that exist (1.17-1.34x faster on the photo
   recipe's networks, medians of 5 interleaved runs; nothing changes on the
   benchmark's model and the ``fruits`` preset). (Tried and dropped: boxes aligned to
   the pooling grid, so that the pooling reads the conv's box without a splice, cost
   0.1 s more on the benchmark model: the conv work of the extra rows outweighs the
   gathers saved.)
3. Positions whose boxes have the same sizes in every layer form a batch (each gets
   its own tight boxes); all batches share one compiled function whose sizes are
   dynamic, traced once per model, head, image size, patch and stride. A batch norm
   right after a conv is folded into its kernel and bias, so conv, bias and activation
   run as one fused operation. A stride-1 conv above the image whose output map is not
   recomputed whole runs in *delta form*:
   its output box is its clean pre-activations (computed once per image) plus the
   transposed conv of its input's change (new - old, zero outside the changed box),
   which needs the changed box times the kernel instead of the output box times it;
   the pooling or strided conv after it splices as in step 2. (Tried and dropped, on
   the occlusion benchmark's two models: delta form for the conv on the image, 10%
   slower, its 3 channels make the window cheap and the output box's gather dear; XLA
   for the window pass, 15 s of compiling per model and patch for at most 20% less
   time; boxes clipped to the map, whose sizes then depend on the distance to the
   border: 17-21 size classes per axis instead of 4, 300-440 window-pass calls per
   image; the delta as one matmul of the changed box by the kernel reshaped to
   (C, kh*kw*C') and a col2im (nine pads, a segment sum, a 0/1 matrix or a gather),
   which makes exactly the changed box's products: 1.06-3.4x slower than the
   transposed conv at the two models' box sizes, its product tensor being kh*kw times
   the changed box; a forward conv of the zero-padded change with the pre-activations
   and ReLU fused into it: 0.9-1.1x the transposed conv's time; the gathers, splices,
   poolings and delta-form additions fused into four Numba kernels around TensorFlow's
   convs: 0.90x the speed, the kernels moving data at 7-13 GB/s like the gathers and the
   convs 1.3x slower on arrays handed over from NumPy; every batch of an image in one
   compiled call: 1.09x faster, 1.9 s first call; batches of 64-400 positions, to stay
   in the cache: 1.2-2.2x slower, about 7 ms of fixed cost per batch.) The passes are
   traced without autograph (their Python control flow is on static values): the line
   model's first map took 1.7 s with it, 0.3 s without.
4. Flatten: the first dense layer changes by ``sum (new - old) * W`` over the changed
   box only. The head pass gathers every changed value of all batches by location of
   the final map and multiplies each location's values by that location's weights in
   one batched product, then sums the products back per position. Global average
   pooling adds the box's change of the mean; global max pooling takes the larger of
   the box's new maximum and the clean map's maximum outside the box (from prefix and
   suffix maxima per row and column). The vector layers then run on the batch as usual.

The parts: :mod:`visualize.incremental.analysis` (step 1: the layer walk, :class:`Chain`,
:class:`Unsupported`), :mod:`visualize.incremental.indexing` (step 2: the axis plans
and the gather indices) and :mod:`visualize.incremental.engine` (steps 3 and 4:
:class:`IncrementalOccluder`, its batches and compiled passes).
"""

from visualize.incremental.analysis import Chain, Unsupported, analyse
from visualize.incremental.engine import WINDOW_BUDGET, IncrementalOccluder

# Private names that tests use (a test replaces them in visualize.incremental.engine).
from visualize.incremental.indexing import _Axis as _Axis
from visualize.incremental.indexing import _axis_plan as _axis_plan

__all__ = ["WINDOW_BUDGET", "Chain", "IncrementalOccluder", "Unsupported", "analyse"]
