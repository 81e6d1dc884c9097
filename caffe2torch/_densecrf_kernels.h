// The dense CRF's per-iteration loops, written once over a vector type `Vec` (4 floats with SSE2, 8 with
// AVX2) and compiled once per instruction set by _densecrf.cpp, which includes this file inside a namespace
// after defining Vec there. Every lane sees the same IEEE operations whatever the width, so all versions
// compute the same floats as pydensecrf's SSE2 code.
//
// Needs from the including file: Vec (with sum_eigen_packets), Lattice, Kernel, lattice_alpha, kMaxLabels,
// kMaxKernels, kPixelPrefetch, kBlurPrefetch.

// One blur pass along `axis` over vertices [begin, end): out = in + 0.5 * (in[n1] + in[n2]) (table rows are
// vertex + 1; row 0, the missing neighbour, stays zero).
inline void blur_rows(const Lattice& lattice, int axis, int stride, const float* in, float* out, int32_t begin,
                      int32_t end) {
    const int32_t m = lattice.vertices;
    const int32_t* pairs = &lattice.neighbours[static_cast<size_t>(axis) * m * 2];
    const Vec half = Vec::set(0.5f);
    constexpr int32_t ahead = kBlurPrefetch;  // fetch the neighbours' rows a few vertices early
    for (int32_t i = begin; i < end; ++i) {
        if (i + ahead < end) {
            const float* p1 = in + static_cast<size_t>(pairs[2 * (i + ahead)]) * stride;
            const float* p2 = in + static_cast<size_t>(pairs[2 * (i + ahead) + 1]) * stride;
            __builtin_prefetch(p1);
            __builtin_prefetch(p1 + stride - 1);
            __builtin_prefetch(p2);
            __builtin_prefetch(p2 + stride - 1);
        }
        const float* old_value = in + static_cast<size_t>(i + 1) * stride;
        const float* n1 = in + static_cast<size_t>(pairs[2 * i]) * stride;
        const float* n2 = in + static_cast<size_t>(pairs[2 * i + 1]) * stride;
        float* new_value = out + static_cast<size_t>(i + 1) * stride;
        for (int k = 0; k < stride; k += Vec::kLanes)
            Vec::store(new_value + k, Vec::load(old_value + k) + half * (Vec::load(n1 + k) + Vec::load(n2 + k)));
    }
}

// All blur passes along one axis in place, chain by chain: `list` holds the table rows of every vertex that
// has a neighbour on this axis, each chain from the vertex without neighbour 1 along neighbour 2 to the one
// without neighbour 2, a chain's first row negated. Walking a chain keeps the old value of the previous
// vertex (its neighbour 1) and reads the next one before it is overwritten, so each row becomes
// old + 0.5 * (old[n1] + old[n2]) as in the two-table pass; vertices without neighbours on the axis keep
// their value (old + 0.5 * (0 + 0)) without being touched. S: the row stride when known (0: `stride`).
template <int S>
void blur_chains(const int32_t* list, size_t count, int stride, float* table) {
    if (S > 0) stride = S;
    const int packets = stride / Vec::kLanes;
    constexpr int kBuffer = (S > 0 ? S : kMaxLabels + 8) / Vec::kLanes;
    const Vec half = Vec::set(0.5f), zero = Vec::set(0.0f);
    Vec previous[kBuffer], current[kBuffer], next[kBuffer];
    for (int j = 0; j < packets; ++j) current[j] = next[j] = zero;
    constexpr size_t ahead = kChainPrefetch;
    for (size_t k = 0; k < count; ++k) {
        if (k + ahead < count) {
            const int32_t future = list[k + ahead];
            const float* row = table + static_cast<size_t>(future < 0 ? -future : future) * stride;
            __builtin_prefetch(row, 1);
            __builtin_prefetch(row + stride - 1, 1);
        }
        const int32_t entry = list[k];
        float* row = table + static_cast<size_t>(entry < 0 ? -entry : entry) * stride;
        if (entry < 0) {
            for (int j = 0; j < packets; ++j) {
                previous[j] = zero;
                current[j] = Vec::load(row + Vec::kLanes * j);
            }
        } else {
            for (int j = 0; j < packets; ++j) {
                previous[j] = current[j];
                current[j] = next[j];
            }
        }
        if (k + 1 < count && list[k + 1] > 0) {
            const float* following = table + static_cast<size_t>(list[k + 1]) * stride;
            for (int j = 0; j < packets; ++j) next[j] = Vec::load(following + Vec::kLanes * j);
        } else {
            for (int j = 0; j < packets; ++j) next[j] = zero;
        }
        for (int j = 0; j < packets; ++j) Vec::store(row + Vec::kLanes * j, current[j] + half * (previous[j] + next[j]));
    }
}

inline void run_blur_chains(const int32_t* list, size_t count, int stride, float* table) {
    switch (stride) {
        case 8: return blur_chains<8>(list, count, stride, table);
        case 16: return blur_chains<16>(list, count, stride, table);
        case 24: return blur_chains<24>(list, count, stride, table);
        case 32: return blur_chains<32>(list, count, stride, table);
        default: return blur_chains<0>(list, count, stride, table);
    }
}

// Constants for the vector `last` that holds the last label (see exp_and_normalise).
struct Lanes {
    Vec limit;          // +inf on the labels' lanes, -inf on the padding
    Vec keep;           // 1 on the lanes of labels in whole 4-float packets, 0 elsewhere
    Vec one_hot[3];     // 1 on the lane of tail label t, 0 elsewhere
    int tail = 0;       // labels % 4: the labels Eigen leaves to its scalar loop
    int first_tail = 0; // lane of the first of them in vector `last`
    Lanes(int labels, int last) {
        alignas(32) float limits[Vec::kLanes], keeps[Vec::kLanes], hot[Vec::kLanes];
        const int full = labels / 4 * 4;
        for (int i = 0; i < Vec::kLanes; ++i) {
            const int label = last * Vec::kLanes + i;
            limits[i] = label < labels ? INFINITY : -INFINITY;
            keeps[i] = label < full ? 1.0f : 0.0f;
        }
        limit = Vec::load(limits);
        keep = Vec::load(keeps);
        tail = labels - full;
        first_tail = full - last * Vec::kLanes;
        for (int t = 0; t < 3; ++t) {
            for (int i = 0; i < Vec::kLanes; ++i) hot[i] = (t < tail && i == first_tail + t) ? 1.0f : 0.0f;
            one_hot[t] = Vec::load(hot);
        }
    }
};

// pydensecrf's expAndNormalize of one pixel, from energies e to q (`packets` vectors; lanes >= labels of q are
// set to 0): subtract the maximum; exp with Eigen's packet exp for the labels in whole 4-float packets and
// the C library's expf for the rest (Eigen's scalar tail); divide by the sum taken in Eigen's order (see
// sum_eigen_packets).
inline void exp_and_normalise(const Vec* e, Vec* q, int labels, int packets, int last, const Lanes& lanes) {
    Vec m = Vec::min(e[last], lanes.limit);
    for (int j = 0; j < last; ++j) m = Vec::max(m, e[j]);
    const float maximum = m.horizontal_max();
    const Vec shift = Vec::set(maximum);
    for (int j = 0; j <= last; ++j) q[j] = Vec::exp(e[j] - shift);
    // The labels after the last whole 4-float packet take expf, put in place arithmetically (x * 0 + y * 1)
    // rather than through memory, which would stall the vector load on the scalar stores.
    float tail[3] = {0.0f, 0.0f, 0.0f};
    alignas(32) float energies[Vec::kLanes];
    Vec::store(energies, e[last]);
    q[last] = q[last] * lanes.keep;
    for (int t = 0; t < lanes.tail; ++t) {
        tail[t] = std::exp(energies[lanes.first_tail + t] - maximum);
        q[last] = q[last] + Vec::set(tail[t]) * lanes.one_hot[t];
    }
    for (int j = last + 1; j < packets; ++j) q[j] = Vec::set(0.0f);
    float sum;
    if (labels < 4) {
        sum = tail[0];
        for (int t = 1; t < lanes.tail; ++t) sum = sum + tail[t];
    } else {
        sum = sum_eigen_packets(q, labels);
        for (int t = 0; t < lanes.tail; ++t) sum = sum + tail[t];
    }
    const Vec total = Vec::set(sum);
    for (int j = 0; j <= last; ++j) q[j] = q[j] / total;
}

// The mean-field update, one pass over the pixels: for each pixel, energy = unary minus each kernel's
// -w * norm * slice(blurred table), kernel after kernel (pydensecrf's tmp1 -= potential), Q =
// expAndNormalize(energy); then Q is splatted into every kernel's next table (pixel order, as pydensecrf's
// splat: assignment where the pixel is the vertex's first, addition after) or, on the last pass, written to
// `out` (labels x points). `slice` false: the first pass, Q = expAndNormalize(unary).
// S: the row stride in floats when known at compile time (0: `stride`).
template <int S>
void pixel_pass(std::vector<Kernel>& kernels, const float* unary, int64_t points, int labels, int stride,
                bool slice, float* out) {
    if (S > 0) stride = S;
    if (labels > stride) return;
    const int packets = stride / Vec::kLanes;
    const int last = (labels - 1) / Vec::kLanes;
    constexpr int kBuffer = (S > 0 ? S : kMaxLabels + 8) / Vec::kLanes;
    Vec e[kBuffer], q[kBuffer], acc[kBuffer];
    const Lanes lanes(labels, last);
    struct Pass {
        const int32_t* rows;
        const float* weights;
        const uint32_t* first;
        const float* norm;
        const float* blurred;
        float* target;
        int v;
        float alpha, minus_w;
    };
    Pass passes[kMaxKernels];
    const int count = static_cast<int>(kernels.size());
    for (int k = 0; k < count; ++k) {
        Kernel& kernel = kernels[k];
        float* target = out ? nullptr : kernel.tables[kernel.splat_table].data();
        if (target)
            for (int32_t row : kernel.lattice.untouched)
                std::fill_n(target + static_cast<size_t>(row) * stride, stride, 0.0f);
        passes[k] = {kernel.lattice.rows.data(), kernel.lattice.weights.data(), kernel.lattice.first.data(),
                     kernel.norm.data(), kernel.tables[kernel.blurred_table].data(), target, kernel.lattice.d + 1,
                     lattice_alpha(kernel.lattice.d), -kernel.weight};
    }
    // The rows of the pixel kPixelPrefetch ahead are fetched while this one is computed: the bilateral
    // lattice's rows lie all over its tables, and waiting for each in turn would cost more than the arithmetic.
    constexpr int ahead = kPixelPrefetch;
    for (int64_t p = 0; p < points; ++p) {
        if (p + ahead < points) {
            for (int k = 0; k < count; ++k) {
                const Pass& pass = passes[k];
                const int32_t* rows = pass.rows + (p + ahead) * pass.v;
                for (int r = 0; r < pass.v; ++r) {
                    const size_t offset = static_cast<size_t>(rows[r]) * stride;
                    if (slice) {
                        __builtin_prefetch(pass.blurred + offset);
                        __builtin_prefetch(pass.blurred + offset + stride - 1);
                    }
                    if (pass.target) {
                        __builtin_prefetch(pass.target + offset, 1);
                        __builtin_prefetch(pass.target + offset + stride - 1, 1);
                    }
                }
            }
        }
        for (int j = 0; j < packets; ++j) e[j] = Vec::load(unary + p * stride + Vec::kLanes * j);
        if (slice) {
            for (int k = 0; k < count; ++k) {
                const Pass& pass = passes[k];
                const int32_t* rows = pass.rows + p * pass.v;
                const float* w = pass.weights + p * pass.v;
                for (int j = 0; j < packets; ++j) acc[j] = Vec::set(0.0f);
                if (labels > 2) {  // pydensecrf's SSE slice: (weight * alpha) * value
                    for (int r = 0; r < pass.v; ++r) {
                        const Vec weight = Vec::set(w[r] * pass.alpha);
                        const float* row = pass.blurred + static_cast<size_t>(rows[r]) * stride;
                        for (int j = 0; j < packets; ++j)
                            acc[j] = acc[j] + weight * Vec::load(row + Vec::kLanes * j);
                    }
                } else {  // its scalar code, for one or two values per pixel: (weight * value) * alpha
                    const Vec alpha = Vec::set(pass.alpha);
                    for (int r = 0; r < pass.v; ++r) {
                        const Vec weight = Vec::set(w[r]);
                        const float* row = pass.blurred + static_cast<size_t>(rows[r]) * stride;
                        for (int j = 0; j < packets; ++j)
                            acc[j] = acc[j] + weight * Vec::load(row + Vec::kLanes * j) * alpha;
                    }
                }
                const Vec norm = Vec::set(pass.norm[p]), minus_w = Vec::set(pass.minus_w);
                for (int j = 0; j < packets; ++j) e[j] = e[j] - minus_w * (acc[j] * norm);
            }
        }
        exp_and_normalise(e, q, labels, packets, last, lanes);
        if (out) {
            alignas(32) float values[kBuffer * Vec::kLanes];
            for (int j = 0; j <= last; ++j) Vec::store(values + Vec::kLanes * j, q[j]);
            for (int k = 0; k < labels; ++k) out[k * points + p] = values[k];
            continue;
        }
        for (int k = 0; k < count; ++k) {
            const Pass& pass = passes[k];
            const int32_t* rows = pass.rows + p * pass.v;
            const float* w = pass.weights + p * pass.v;
            const uint32_t first = pass.first[p];
            for (int r = 0; r < pass.v; ++r) {
                const Vec weight = Vec::set(w[r]);
                float* row = pass.target + static_cast<size_t>(rows[r]) * stride;
                if (first >> r & 1u) {
                    for (int j = 0; j < packets; ++j) Vec::store(row + Vec::kLanes * j, weight * q[j]);
                } else {
                    for (int j = 0; j < packets; ++j)
                        Vec::store(row + Vec::kLanes * j, Vec::load(row + Vec::kLanes * j) + weight * q[j]);
                }
            }
        }
    }
}

inline void run_pixel_pass(std::vector<Kernel>& kernels, const float* unary, int64_t points, int labels,
                           int stride, bool slice, float* out) {
    switch (stride) {
        case 8: return pixel_pass<8>(kernels, unary, points, labels, stride, slice, out);
        case 16: return pixel_pass<16>(kernels, unary, points, labels, stride, slice, out);
        case 24: return pixel_pass<24>(kernels, unary, points, labels, stride, slice, out);
        case 32: return pixel_pass<32>(kernels, unary, points, labels, stride, slice, out);
        default: return pixel_pass<0>(kernels, unary, points, labels, stride, slice, out);
    }
}
