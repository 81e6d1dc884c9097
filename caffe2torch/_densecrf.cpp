// Krähenbühl's fully connected CRF (mean field with permutohedral-lattice Gaussian filtering), computing the
// same floats as pydensecrf2 does on x86-64 (its SSE2 build: Eigen 3.3 vectors, no FMA), with a memory layout
// and an order of work of our own. Written for caffe2torch (BSD-2-Clause); the algorithm is Adams, Baek and
// Davis (2010) and Krähenbühl and Koltun (2011); the code is ours.
//
// Where the time goes and what is done about it (500x375, DeepLab v2's two kernels, 10 iterations):
//  * the lattice: packed integer keys in an open-addressing table with prefetched probes, one lookup per
//    vertex and axis for both blur neighbours, the per-point geometry specialised for d = 2 and 5;
//  * each iteration is one pass over the pixels that slices every kernel, applies normalisation, Potts and
//    the softmax, and splats the new Q straight into every kernel's next table (no Q, energy or zeroed
//    table in between: a pixel that is first at a vertex assigns instead of adding), prefetching the table
//    rows of pixels a few ahead;
//  * the blur of a lattice whose neighbours are close in vertex order (the positional kernel's) runs as a
//    cache-sized wavefront over all its axes instead of one pass per axis through memory;
//  * buffers are kept between calls (no page faults for the next image) on transparent huge pages; the
//    per-pixel loops are compiled for SSE2 and AVX2 and chosen by the CPU at run time.
//
// Exactness rules followed throughout (tests/test_crf_native.py compares with pydensecrf bit for bit):
//  * every floating-point operation is the one the reference performs, on the same operand types, in the
//    same order per value; loops may be reordered only where each value still sees its additions in the
//    reference's order (a vertex's splat in pixel order, a pixel's slice in simplex order, the softmax's sum
//    in Eigen's order);
//  * no FMA contraction (the build passes -ffp-contract=off; the AVX2 loops are not compiled for FMA) and no
//    fast-math.
//
// Python interface (module caffe2torch._densecrf; caffe2torch/crf_native.py is the wrapper):
//   inference(scores, out, kernels, max_iter) -> (lattice_seconds, iteration_seconds)
//     scores: float32 C-contiguous (labels, pixels) logits (the unary is -scores); out: writable float32
//     (labels, pixels) for Q; kernels: sequence of (features float32 C-contiguous (d, pixels), weight).
//   lattice_vertices(features) -> number of lattice vertices (as pydensecrf counts them).
//   release_workspace() frees the buffers the calling thread keeps between calls.
//   blur_mode([mode]) forces one of the two blur schedules (tests).
// Inputs are checked before anything large is allocated (ValueError); the GIL is released while the CRF runs.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#endif

#if defined(__GNUC__)
#define STAGE __attribute__((noinline))  // keeps the stages apart in profiles; called once per pass
#else
#define STAGE
#endif

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace {

constexpr int kMaxFeatures = 16;   // d; DeepLab uses 2 (positional) and 5 (bilateral)
constexpr int kMaxLabels = 4096;
constexpr int kMaxKernels = 64;
constexpr int32_t kBlurChunk = 64;                  // vertices per wavefront step of the blur
constexpr size_t kBlurWindowBytes = size_t(1) << 20;  // the wavefront's working set must fit the L2 cache
constexpr int kPixelPrefetch = 8;                   // pixels ahead whose table rows are prefetched
constexpr int32_t kBlurPrefetch = 8;                // vertices ahead whose neighbours' rows are prefetched
constexpr size_t kChainPrefetch = 8;                // chain entries ahead whose rows are prefetched

// A bad input, reported to Python as ValueError (everything is checked before any large allocation).
struct InputError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A std::vector whose resize leaves new elements uninitialised: every buffer here is written before it is
// read, and its memory is kept from call to call (see Workspace), so zero-filling would only cost time.
// Large buffers are aligned to 2 MB and, on Linux, marked for transparent huge pages: the value tables are
// read and written at random, and with 4 KB pages most of those accesses would also miss the TLB.
constexpr size_t kHugePage = size_t(2) << 20;
inline void* allocate_bytes(size_t bytes) {
    void* memory = nullptr;
    if (bytes >= 2 * kHugePage) {
        if (posix_memalign(&memory, kHugePage, bytes) != 0) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
        madvise(memory, bytes, MADV_HUGEPAGE);  // advice only: without it the buffer still works
#endif
    } else {
        memory = std::malloc(bytes == 0 ? 1 : bytes);
        if (!memory) throw std::bad_alloc();
    }
    return memory;
}

template <class T>
struct NoInitAllocator {
    using value_type = T;
    template <class U>
    struct rebind {
        using other = NoInitAllocator<U>;
    };
    NoInitAllocator() = default;
    template <class U>
    NoInitAllocator(const NoInitAllocator<U>&) noexcept {}
    T* allocate(size_t n) {
        if (n > SIZE_MAX / sizeof(T)) throw std::bad_alloc();
        return static_cast<T*>(allocate_bytes(n * sizeof(T)));
    }
    void deallocate(T* p, size_t) noexcept { std::free(p); }
    template <class U>
    bool operator==(const NoInitAllocator<U>&) const noexcept { return true; }
    template <class U>
    bool operator!=(const NoInitAllocator<U>&) const noexcept { return false; }
    template <class U>
    void construct(U*) noexcept {}
    template <class U, class... Args>
    void construct(U* p, Args&&... args) {
        ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
    }
};
template <class T>
using Buffer = std::vector<T, NoInitAllocator<T>>;

// ------------------------------------------------------------------------------------------------
// The softmax of pydensecrf2's expAndNormalize, lane for lane.
// ------------------------------------------------------------------------------------------------

// One lane of Eigen 3.3's pexp<Packet4f> in an SSE2 build without FMA (Cephes' polynomial): the exp that
// pydensecrf2's `b.array().exp()` uses for the labels that fill whole 4-float packets.
[[maybe_unused]] inline float eigen_sse2_exp(float input) {
    const float exp_hi = 88.3762626647950f, exp_lo = -88.3762626647949f;
    float x = input < exp_hi ? input : exp_hi;  // _mm_min_ps(x, hi)
    x = x > exp_lo ? x : exp_lo;                // _mm_max_ps(x, lo)
    float fx = x * 1.44269504088896341f + 0.5f;
    // floor without SSE4.1: truncate, then subtract 1 where the truncation went up
    float truncated = static_cast<float>(static_cast<int32_t>(fx));
    fx = truncated - (truncated > fx ? 1.0f : 0.0f);
    float high = fx * 0.693359375f;
    float low = fx * -2.12194440e-4f;
    x = x - high;
    x = x - low;
    float z = x * x;
    float y = 1.9875691500E-4f;
    y = y * x + 1.3981999507E-3f;
    y = y * x + 8.3334519073E-3f;
    y = y * x + 4.1665795894E-2f;
    y = y * x + 1.6666665459E-1f;
    y = y * x + 5.0000001201E-1f;
    y = y * z + x;
    y = y + 1.0f;
    int32_t exponent_bits = (static_cast<int32_t>(fx) + 0x7f) * (1 << 23);  // (n + 127) << 23
    float power;
    std::memcpy(&power, &exponent_bits, sizeof power);
    float result = y * power;
    return result > input ? result : input;  // _mm_max_ps(y * 2^n, input)
}

#if defined(__SSE2__)
// Four lanes of eigen_sse2_exp at once: the same operations as Eigen's pexp<Packet4f>, so the same floats.
inline __m128 eigen_sse2_exp4(__m128 input) {
    const __m128 one = _mm_set1_ps(1.0f);
    __m128 x = _mm_min_ps(input, _mm_set1_ps(88.3762626647950f));
    x = _mm_max_ps(x, _mm_set1_ps(-88.3762626647949f));
    __m128 fx = _mm_add_ps(_mm_mul_ps(x, _mm_set1_ps(1.44269504088896341f)), _mm_set1_ps(0.5f));
    __m128 truncated = _mm_cvtepi32_ps(_mm_cvttps_epi32(fx));
    fx = _mm_sub_ps(truncated, _mm_and_ps(_mm_cmpgt_ps(truncated, fx), one));
    x = _mm_sub_ps(x, _mm_mul_ps(fx, _mm_set1_ps(0.693359375f)));
    x = _mm_sub_ps(x, _mm_mul_ps(fx, _mm_set1_ps(-2.12194440e-4f)));
    __m128 z = _mm_mul_ps(x, x);
    __m128 y = _mm_set1_ps(1.9875691500E-4f);
    y = _mm_add_ps(_mm_mul_ps(y, x), _mm_set1_ps(1.3981999507E-3f));
    y = _mm_add_ps(_mm_mul_ps(y, x), _mm_set1_ps(8.3334519073E-3f));
    y = _mm_add_ps(_mm_mul_ps(y, x), _mm_set1_ps(4.1665795894E-2f));
    y = _mm_add_ps(_mm_mul_ps(y, x), _mm_set1_ps(1.6666665459E-1f));
    y = _mm_add_ps(_mm_mul_ps(y, x), _mm_set1_ps(5.0000001201E-1f));
    y = _mm_add_ps(_mm_mul_ps(y, z), x);
    y = _mm_add_ps(y, one);
    __m128i exponent = _mm_slli_epi32(_mm_add_epi32(_mm_cvttps_epi32(fx), _mm_set1_epi32(0x7f)), 23);
    return _mm_max_ps(_mm_mul_ps(y, _mm_castsi128_ps(exponent)), input);
}
#endif

// ------------------------------------------------------------------------------------------------
// The permutohedral lattice.
// ------------------------------------------------------------------------------------------------

#if defined(__SIZEOF_INT128__)
using WideKey = unsigned __int128;
#else
using WideKey = uint64_t;  // no 128-bit integers: lattices needing more than 64 key bits are refused
#endif

inline uint64_t mix(uint64_t k) {  // splitmix64's finaliser
    k ^= k >> 30;
    k *= 0xbf58476d1ce4e5b9ULL;
    k ^= k >> 27;
    k *= 0x94d049bb133111ebULL;
    return k ^ (k >> 31);
}
inline uint64_t key_hash(uint64_t k) { return mix(k); }
#if defined(__SIZEOF_INT128__)
inline uint64_t key_hash(unsigned __int128 k) {
    return mix(static_cast<uint64_t>(k) ^ mix(static_cast<uint64_t>(k >> 64)));
}
#endif

// Open-addressing table (linear probing, at most half full) from packed vertex keys to vertex numbers, given
// in order of first insertion. Its memory is reused from call to call.
template <class Key>
class VertexTable {
public:
    void reset(size_t expected) {
        size_t capacity = 1024;
        while (capacity < 2 * expected) capacity *= 2;
        count_ = 0;
        rehash(capacity);
    }
    // The vertex number of `key`, inserting it if new (then `created` is set).
    int32_t insert(Key key, bool& created) {
        size_t slot = key_hash(key) & mask_;
        while (true) {
            const Slot& s = slots_[slot];
            if (s.id < 0) break;
            if (s.key == key) {
                created = false;
                return s.id;
            }
            slot = (slot + 1) & mask_;
        }
        const int32_t id = static_cast<int32_t>(count_);
        slots_[slot] = {key, id};
        if (count_ == keys_.size()) keys_.resize(std::max<size_t>(1024, 2 * keys_.size()));
        keys_[count_++] = key;
        created = true;
        if (2 * count_ > slots_.size()) rehash(2 * slots_.size());
        return id;
    }
    int32_t find(Key key) const {
        size_t slot = key_hash(key) & mask_;
        while (true) {
            const Slot& s = slots_[slot];
            if (s.id < 0) return -1;
            if (s.key == key) return s.id;
            slot = (slot + 1) & mask_;
        }
    }
    void prefetch(Key key) const { __builtin_prefetch(&slots_[key_hash(key) & mask_]); }
    size_t size() const { return count_; }
    Key key(int32_t id) const { return keys_[id]; }
    size_t bytes() const { return slots_.capacity() * sizeof(Slot) + keys_.capacity() * sizeof(Key); }
    void release() {
        Buffer<Slot>().swap(slots_);
        Buffer<Key>().swap(keys_);
        count_ = 0;
    }

private:
    struct Slot {
        Key key;
        int32_t id;
    };
    void rehash(size_t capacity) {
        slots_.resize(capacity);
        for (Slot& s : slots_) s.id = -1;
        mask_ = capacity - 1;
        for (size_t id = 0; id < count_; ++id) {
            size_t slot = key_hash(keys_[id]) & mask_;
            while (slots_[slot].id >= 0) slot = (slot + 1) & mask_;
            slots_[slot] = {keys_[id], static_cast<int32_t>(id)};
        }
    }
    Buffer<Slot> slots_;
    Buffer<Key> keys_;
    size_t count_ = 0;
    size_t mask_ = 0;
};

// The lattice of one kernel: for each pixel the d+1 vertices of its simplex (table rows, 1-based: row 0 is
// the all-zero row that stands for "no such vertex") and barycentric weights, and for each blur axis the
// two neighbours of each vertex.
struct Lattice {
    int d = 0;
    int64_t points = 0;
    int32_t vertices = 0;
    Buffer<int32_t> rows;           // points x (d+1)
    Buffer<float> weights;          // points x (d+1)
    Buffer<uint32_t> first;         // per point: bit r set where the point is its vertex r's first (in pixel
                                    // order), so that splatting can assign there instead of adding
    std::vector<int32_t> untouched; // rows of vertices no pixel splats into (see the padding below)
    Buffer<int32_t> neighbours;     // (d+1) x vertices x 2
    Buffer<int32_t> chains;         // per axis, the vertices' rows chain by chain (see blur_chains)
    size_t chain_start[kMaxFeatures + 2] = {};  // where each axis's chains begin in `chains`
    int32_t ahead[kMaxFeatures + 1] = {};   // per axis, the largest neighbour - vertex
    int32_t behind[kMaxFeatures + 1] = {};  // per axis, the largest vertex - neighbour
    size_t bytes() const {
        return rows.capacity() * 4 + weights.capacity() * 4 + first.capacity() * 4 + neighbours.capacity() * 4 +
               chains.capacity() * 4;
    }
};

// Packing of the first d lattice coordinates (the last one is minus their sum) into one integer: field i
// holds coordinate i minus low[i] in bits [shift[i], shift[i] + width[i]). The bounds come from the
// features' ranges with margins for rounding, the simplex offsets and the blur neighbours, so every key and
// neighbour key lies inside its field and adding a packed offset never carries between fields.
struct KeyPacking {
    int d = 0;
    int64_t low[kMaxFeatures] = {};
    int64_t high[kMaxFeatures] = {};
    int shift[kMaxFeatures] = {};
    int total_bits = 0;
};

// Krähenbühl's scale factors of the elevation (the diagonal of E, p.5 of Adams et al.), as his SSE code
// computes them: in double, rounded to float once.
void scale_factors(int d, float* scale) {
    const float inv_std_dev = static_cast<float>(std::sqrt(2.0 / 3.0) * (d + 1));
    for (int i = 0; i < d; ++i)
        scale[i] = static_cast<float>(1.0 / std::sqrt(static_cast<double>((i + 2) * (i + 1))) * inv_std_dev);
}

KeyPacking key_packing(const float* features, int d, int64_t points, const float* scale) {
    // Interval of each elevated coordinate, from the per-feature ranges (0 included: the padding points).
    double fmin[kMaxFeatures], fmax[kMaxFeatures];
    for (int j = 0; j < d; ++j) {
        const float* row = features + j * points;
        float lo = 0.0f, hi = 0.0f;
        for (int64_t i = 0; i < points; ++i) {
            lo = std::min(lo, row[i]);
            hi = std::max(hi, row[i]);
        }
        fmin[j] = static_cast<double>(lo) * scale[j];
        fmax[j] = static_cast<double>(hi) * scale[j];
    }
    KeyPacking packing;
    packing.d = d;
    const double limit = 1 << 22;  // elevated coordinates stay exact floats, keys far inside int32
    const int64_t margin = 4 * (d + 1) + 4;
    int bits = 0;
    for (int j = 0; j < d; ++j) {
        // elevated[j] = sum_{i >= j} cf[i] - j * cf[j-1] (j >= 1); elevated[0] = sum of all cf
        double lo = 0, hi = 0;
        for (int i = j; i < d; ++i) {
            lo += fmin[i];
            hi += fmax[i];
        }
        if (j > 0) {
            lo -= j * fmax[j - 1];
            hi -= j * fmin[j - 1];
        }
        if (!(std::fabs(lo) < limit && std::fabs(hi) < limit))
            throw InputError("the CRF features span too wide a range for the permutohedral lattice "
                             "(a standard deviation far too small for the image?)");
        packing.low[j] = static_cast<int64_t>(std::floor(lo)) - margin;
        packing.high[j] = static_cast<int64_t>(std::ceil(hi)) + margin;
        packing.shift[j] = bits;
        uint64_t span = static_cast<uint64_t>(packing.high[j] - packing.low[j] + 1);
        int width = 0;
        while ((uint64_t(1) << width) < span) ++width;
        bits += width;
    }
    packing.total_bits = bits;
    if (bits > static_cast<int>(8 * sizeof(WideKey)))
        throw InputError("the CRF features span too wide a range for the permutohedral lattice (" +
                         std::to_string(bits) + " key bits)");
    return packing;
}

template <class Key>
inline Key field(int64_t value, int shift) {  // value << shift in modular arithmetic (value may be < 0)
    return static_cast<Key>(static_cast<Key>(static_cast<int64_t>(value)) << shift);
}

// Rounding as Krähenbühl's SSE2 code does it, _mm_cvtepi32_ps(_mm_cvtps_epi32(v)): to nearest even (the
// default MXCSR mode, which his code sets explicitly), INT_MIN where v is out of int32 range.
inline float round_to_int(float v) {
#if defined(__SSE2__)
    return static_cast<float>(_mm_cvtss_si32(_mm_set_ss(v)));
#else
    return std::fabs(v) < 2147483648.0f ? std::nearbyint(v) : -2147483648.0f;
#endif
}

// Where one point lies in the lattice, exactly as Krähenbühl's SSE code computes it for one lane:
// elevation, the nearest remainder-0 point by rounding to nearest even, ranks (ties to the later
// coordinate), the wrap back onto the plane, and the barycentric weights with their wrap-around.
// Outputs rem0 (d+1 ints), rank (d+1 ints) and weights (d+1 floats).
// D: d when known at compile time (0: the argument). The ranks are counted in integers, which is exact: the
// reference adds 0s and 1s to small integral floats.
template <int D>
inline void locate(const float* f, int d, const float* scale, int32_t* rem0_out, int32_t* rank_out,
                   float* weights) {
    if (D > 0) d = D;
    constexpr int kSize = (D > 0 ? D : kMaxFeatures) + 2;
    float elevated[kSize], rem0[kSize], barycentric[kSize];
    int32_t rank[kSize];
    const float down = 1.0f / static_cast<float>(d + 1);
    const float up = static_cast<float>(d + 1);
    float sm = 0.0f;
    for (int j = d; j > 0; --j) {
        float cf = f[j - 1] * scale[j - 1];
        elevated[j] = sm - static_cast<float>(j) * cf;
        sm = sm + cf;
    }
    elevated[0] = sm;
    float sum = 0.0f;
    for (int i = 0; i <= d; ++i) {
        float v = round_to_int(down * elevated[i]);
        rem0[i] = v * up;
        sum = sum + v;
    }
    const int32_t shift = static_cast<int32_t>(sum);
    float difference[kSize];
    for (int i = 0; i <= d; ++i) {
        difference[i] = elevated[i] - rem0[i];
        rank[i] = 0;
    }
    for (int i = 0; i < d; ++i)
        for (int j = i + 1; j <= d; ++j) {
            const int32_t c = difference[i] < difference[j];
            rank[i] += c;
            rank[j] += 1 - c;
        }
    for (int i = 0; i <= d; ++i) {
        rank[i] += shift;
        const int32_t wrap = rank[i] < 0 ? d + 1 : (rank[i] >= d + 1 ? -(d + 1) : 0);
        rank[i] += wrap;
        rem0[i] = rem0[i] + static_cast<float>(wrap);
    }
    for (int i = 0; i <= d + 1; ++i) barycentric[i] = 0.0f;
    for (int i = 0; i <= d; ++i) {
        float v = (elevated[i] - rem0[i]) * down;
        int p = d - rank[i];
        barycentric[p] = barycentric[p] + v;
        barycentric[p + 1] = barycentric[p + 1] - v;
    }
    barycentric[0] = barycentric[0] + (1.0f + barycentric[d + 1]);
    for (int i = 0; i <= d; ++i) {
        rem0_out[i] = static_cast<int32_t>(rem0[i]);
        rank_out[i] = rank[i];
        weights[i] = barycentric[i];
    }
}

template <class Key, int D>
STAGE void build_lattice_with(const float* features, int d, int64_t points, const float* scale,
                              const KeyPacking& packing, VertexTable<Key>& table, Lattice& lattice) {
    if (D > 0) d = D;
    lattice.d = d;
    lattice.points = points;
    const int v = d + 1;
    lattice.rows.resize(points * v);
    lattice.weights.resize(points * v);
    lattice.first.resize(points);
    lattice.untouched.clear();
    table.reset(static_cast<size_t>(points));

    // Packed offsets of the canonical simplex: vertex r of a point adds canonical[r][rank[i]] to
    // coordinate i, which is r where rank[i] <= d - r and r - (d+1) elsewhere.
    Key bias = 0;
    for (int i = 0; i < d; ++i) bias += field<Key>(-packing.low[i], packing.shift[i]);
    auto point_keys = [&](const int32_t* rem0, const int32_t* rank, Key* keys) {
        for (int i = 0; i < d; ++i)
            if (rem0[i] - d < packing.low[i] || rem0[i] + d > packing.high[i])
                throw std::logic_error("lattice key outside its computed bounds");
        Key base = bias;
        for (int i = 0; i < d; ++i) base += field<Key>(rem0[i], packing.shift[i]);
        for (int r = 0; r <= d; ++r) {
            Key key = base;
            for (int i = 0; i < d; ++i) key += field<Key>(rank[i] <= d - r ? r : r - (d + 1), packing.shift[i]);
            keys[r] = key;
        }
    };
    // Points in blocks: locate a block and prefetch its vertices' hash slots, then insert them in point order.
    constexpr int kBlock = 32;
    Key keys[kBlock * (kMaxFeatures + 1)];
    float f[kMaxFeatures];
    int32_t rem0[kMaxFeatures + 1], rank[kMaxFeatures + 1];
    for (int64_t start = 0; start < points; start += kBlock) {
        const int block = static_cast<int>(std::min<int64_t>(kBlock, points - start));
        for (int b = 0; b < block; ++b) {
            const int64_t p = start + b;
            for (int j = 0; j < d; ++j) f[j] = features[j * points + p];
            locate<D>(f, d, scale, rem0, rank, &lattice.weights[p * v]);
            point_keys(rem0, rank, keys + b * v);
            for (int r = 0; r < v; ++r) table.prefetch(keys[b * v + r]);
        }
        for (int b = 0; b < block; ++b) {
            const int64_t p = start + b;
            int32_t* rows = &lattice.rows[p * v];
            uint32_t first = 0;
            for (int r = 0; r < v; ++r) {
                bool created;
                rows[r] = table.insert(keys[b * v + r], created) + 1;
                first |= static_cast<uint32_t>(created) << r;
            }
            lattice.first[p] = first;
        }
    }
    // Krähenbühl's SSE code builds the lattice four points at a time and pads the last block with points
    // at the origin, whose simplex vertices it adds to the lattice too (they then take part in the blur).
    if (points % 4 != 0) {
        float weights[kMaxFeatures + 1];
        for (int j = 0; j < d; ++j) f[j] = 0.0f;
        locate<D>(f, d, scale, rem0, rank, weights);
        point_keys(rem0, rank, keys);
        for (int r = 0; r < v; ++r) {
            bool created;
            const int32_t id = table.insert(keys[r], created);
            if (created) lattice.untouched.push_back(id + 1);
        }
    }

    const int32_t m = static_cast<int32_t>(table.size());
    lattice.vertices = m;
    lattice.neighbours.resize(static_cast<size_t>(v) * m * 2);
    Key all_ones = 0;
    for (int i = 0; i < d; ++i) all_ones += field<Key>(1, packing.shift[i]);
    // Along axis j, neighbour 2 of vertex w is u exactly when neighbour 1 of u is w (the offsets are
    // opposite), so one lookup per vertex and axis finds both.
    std::fill(lattice.neighbours.begin(), lattice.neighbours.end(), 0);
    constexpr int32_t kAhead = 16;
    for (int axis = 0; axis <= d; ++axis) {
        // neighbour 1: every coordinate - 1 except coordinate `axis`, which gets + d; neighbour 2: the opposite
        Key towards = static_cast<Key>(Key(0) - all_ones);
        if (axis < d) towards += field<Key>(d + 1, packing.shift[axis]);
        int32_t* out = &lattice.neighbours[static_cast<size_t>(axis) * m * 2];
        for (int32_t i = 0; i < m; ++i) {
            if (i + kAhead < m) table.prefetch(static_cast<Key>(table.key(i + kAhead) + towards));
            const int32_t found = table.find(static_cast<Key>(table.key(i) + towards));
            if (found >= 0) {
                out[2 * i] = found + 1;
                out[2 * found + 1] = i + 1;
            }
        }
    }
    for (int axis = 0; axis <= d; ++axis) {
        const int32_t* pairs = &lattice.neighbours[static_cast<size_t>(axis) * m * 2];
        int32_t ahead = 0, behind = 0;
        for (int32_t i = 0; i < m; ++i)
            for (int side = 0; side < 2; ++side) {
                const int32_t row = pairs[2 * i + side];
                if (row > 0) {
                    ahead = std::max(ahead, row - (i + 1));
                    behind = std::max(behind, (i + 1) - row);
                }
            }
        lattice.ahead[axis] = ahead;
        lattice.behind[axis] = behind;
    }
}

// Vertex tables kept from call to call by the calling thread (see Workspace).
struct VertexTables {
    VertexTable<uint64_t> narrow;
    VertexTable<WideKey> wide;
};

void build_lattice(const float* features, int d, int64_t points, VertexTables& tables, Lattice& lattice) {
    float scale[kMaxFeatures];
    scale_factors(d, scale);
    KeyPacking packing = key_packing(features, d, points, scale);
    if (packing.total_bits > 64)
        build_lattice_with<WideKey, 0>(features, d, points, scale, packing, tables.wide, lattice);
    else if (d == 2)  // DeepLab's positional kernel
        build_lattice_with<uint64_t, 2>(features, d, points, scale, packing, tables.narrow, lattice);
    else if (d == 5)  // and its bilateral kernel
        build_lattice_with<uint64_t, 5>(features, d, points, scale, packing, tables.narrow, lattice);
    else
        build_lattice_with<uint64_t, 0>(features, d, points, scale, packing, tables.narrow, lattice);
}

// The blur chains of every axis (see blur_chains): from each vertex that has neighbour 2 but not neighbour 1,
// along neighbour 2 until the chain ends; vertices with neither neighbour are left out.
void build_chains(Lattice& lattice) {
    const int d = lattice.d;
    const int32_t m = lattice.vertices;
    lattice.chains.resize(static_cast<size_t>(d + 1) * m);
    size_t count = 0;
    for (int axis = 0; axis <= d; ++axis) {
        lattice.chain_start[axis] = count;
        const int32_t* pairs = &lattice.neighbours[static_cast<size_t>(axis) * m * 2];
        for (int32_t i = 0; i < m; ++i) {
            if (pairs[2 * i] != 0 || pairs[2 * i + 1] == 0) continue;
            lattice.chains[count++] = -(i + 1);
            for (int32_t row = pairs[2 * i + 1]; row != 0; row = pairs[2 * (row - 1) + 1]) lattice.chains[count++] = row;
        }
    }
    lattice.chain_start[d + 1] = count;
}

// ------------------------------------------------------------------------------------------------
// Filtering and mean field.
// ------------------------------------------------------------------------------------------------

// Four floats with the SSE operations the reference uses (or the same per-lane operations in plain C++).
#if defined(__SSE2__)
struct F4 {
    static constexpr int kLanes = 4;
    __m128 v;
    static F4 load(const float* p) { return {_mm_loadu_ps(p)}; }
    static void store(float* p, F4 a) { _mm_storeu_ps(p, a.v); }
    static F4 set(float x) { return {_mm_set1_ps(x)}; }
    static F4 max(F4 a, F4 b) { return {_mm_max_ps(a.v, b.v)}; }
    static F4 min(F4 a, F4 b) { return {_mm_min_ps(a.v, b.v)}; }
    static F4 exp(F4 a) { return {eigen_sse2_exp4(a.v)}; }
    float horizontal_sum_eigen() const {  // Eigen's predux<Packet4f>: (a0 + a2) + (a1 + a3)
        __m128 t = _mm_add_ps(v, _mm_movehl_ps(v, v));
        return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
    }
    friend F4 operator+(F4 a, F4 b) { return {_mm_add_ps(a.v, b.v)}; }
    friend F4 operator-(F4 a, F4 b) { return {_mm_sub_ps(a.v, b.v)}; }
    friend F4 operator*(F4 a, F4 b) { return {_mm_mul_ps(a.v, b.v)}; }
    friend F4 operator/(F4 a, F4 b) { return {_mm_div_ps(a.v, b.v)}; }
    float horizontal_max() const {
        __m128 m = _mm_max_ps(v, _mm_movehl_ps(v, v));
        return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
    }
};
#else
struct F4 {
    static constexpr int kLanes = 4;
    float v[4];
    static F4 load(const float* p) { return {{p[0], p[1], p[2], p[3]}}; }
    static void store(float* p, F4 a) { std::memcpy(p, a.v, sizeof a.v); }
    static F4 set(float x) { return {{x, x, x, x}}; }
#define F4_LANEWISE(expression) \
    F4 r;                       \
    for (int i = 0; i < 4; ++i) r.v[i] = (expression); \
    return r
    static F4 max(F4 a, F4 b) { F4_LANEWISE(a.v[i] > b.v[i] ? a.v[i] : b.v[i]); }
    static F4 min(F4 a, F4 b) { F4_LANEWISE(a.v[i] < b.v[i] ? a.v[i] : b.v[i]); }
    static F4 exp(F4 a) { F4_LANEWISE(eigen_sse2_exp(a.v[i])); }
    friend F4 operator+(F4 a, F4 b) { F4_LANEWISE(a.v[i] + b.v[i]); }
    friend F4 operator-(F4 a, F4 b) { F4_LANEWISE(a.v[i] - b.v[i]); }
    friend F4 operator*(F4 a, F4 b) { F4_LANEWISE(a.v[i] * b.v[i]); }
    friend F4 operator/(F4 a, F4 b) { F4_LANEWISE(a.v[i] / b.v[i]); }
#undef F4_LANEWISE
    float horizontal_max() const { return std::max(std::max(v[0], v[1]), std::max(v[2], v[3])); }
    float horizontal_sum_eigen() const { return (v[0] + v[2]) + (v[1] + v[3]); }
};
#endif

// Eigen 3.3's sum of a dynamic float vector with SSE2 packets (redux, LinearVectorizedTraversal, aligned
// start), over the labels in whole 4-float packets (at least one): two accumulators over pairs of packets,
// the second added into the first, then a remaining packet, then the horizontal sum (p0 + p2) + (p1 + p3).
// The caller adds the leftover labels in order.
inline float sum_eigen_packets(const F4* q, int labels) {
    const int full = labels / 4, pairs = labels / 8;
    F4 acc0 = q[0];
    if (full > 1) {
        F4 acc1 = q[1];
        for (int j = 1; j < pairs; ++j) {
            acc0 = acc0 + q[2 * j];
            acc1 = acc1 + q[2 * j + 1];
        }
        acc0 = acc0 + acc1;
        if (full > 2 * pairs) acc0 = acc0 + q[2 * pairs];
    }
    return acc0.horizontal_sum_eigen();
}

// Krähenbühl's magic scaling constant of the slice.
inline float lattice_alpha(int d) { return 1.0f / (1.0f + std::pow(2.0f, static_cast<float>(-d))); }

// NORMALIZE_AFTER's per-pixel normalisation 1 / (filter(1) + 1e-20), as pydensecrf computes it: a one-value
// filtering (its scalar code path: the slice multiplies by alpha after the weight) and the division in double.
STAGE void normalisation(const Lattice& lattice, Buffer<float>& norm) {
    const int v = lattice.d + 1;
    const int32_t m = lattice.vertices;
    std::vector<float> table(m + 1, 0.0f), other(m + 1, 0.0f);
    for (int64_t p = 0; p < lattice.points; ++p)
        for (int r = 0; r < v; ++r) {
            float& value = table[lattice.rows[p * v + r]];
            value = value + lattice.weights[p * v + r] * 1.0f;
        }
    for (int axis = 0; axis < v; ++axis) {
        const int32_t* pairs = &lattice.neighbours[static_cast<size_t>(axis) * m * 2];
        for (int32_t i = 0; i < m; ++i)
            other[i + 1] = table[i + 1] + 0.5f * (table[pairs[2 * i]] + table[pairs[2 * i + 1]]);
        table.swap(other);
    }
    const float alpha = lattice_alpha(lattice.d);
    norm.resize(lattice.points);
    for (int64_t p = 0; p < lattice.points; ++p) {
        float out = 0.0f;
        for (int r = 0; r < v; ++r) out = out + lattice.weights[p * v + r] * table[lattice.rows[p * v + r]] * alpha;
        norm[p] = static_cast<float>(1.0 / (static_cast<double>(out) + 1e-20));
    }
}

// One pairwise kernel during inference: its lattice, normalisation, Potts weight, and two value tables of
// (vertices + 1) rows of `stride` floats (row 0 zero): the blur ping-pongs between them; the pixel pass slices
// the blurred one and splats the next Q into the other.
struct Kernel {
    Lattice lattice;
    Buffer<float> norm;
    float weight = 0.0f;
    Buffer<float> tables[2];
    int splat_table = 0;    // the table the next splat fills
    int blurred_table = 0;  // the table holding the last blur's result
    size_t bytes() const {
        return lattice.bytes() + norm.capacity() * 4 + (tables[0].capacity() + tables[1].capacity()) * 4;
    }
};

// The calling thread's memory, kept from call to call (buffers only grow) so that the next image of a similar
// size reuses it instead of faulting in fresh pages; dropped after a call that leaves more than
// kWorkspaceKeepBytes, and by release_workspace().
struct Workspace {
    VertexTables vertex_tables;
    std::vector<Kernel> kernels;
    Buffer<float> unary;
    size_t bytes() const {
        size_t total = vertex_tables.narrow.bytes() + vertex_tables.wide.bytes() + unary.capacity() * 4;
        for (const Kernel& kernel : kernels) total += kernel.bytes();
        return total;
    }
    void release() {
        vertex_tables.narrow.release();
        vertex_tables.wide.release();
        std::vector<Kernel>().swap(kernels);
        Buffer<float>().swap(unary);
    }
};
constexpr size_t kWorkspaceKeepBytes = size_t(1) << 30;
thread_local Workspace workspace;

// The per-iteration loops, compiled for SSE2 (x86-64's baseline, or plain C++ elsewhere) and, where the
// compiler can target it, for AVX2, chosen at run time by the CPU.
namespace baseline {
using Vec = F4;
#include "_densecrf_kernels.h"
}  // namespace baseline

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
// (GCC's target pragma; other compilers build the baseline loops only)
#define CRF_HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2 {
// Eight floats: the same per-lane operations as F4, two packets at a time.
struct F8 {
    static constexpr int kLanes = 8;
    __m256 v;
    static F8 load(const float* p) { return {_mm256_loadu_ps(p)}; }
    static void store(float* p, F8 a) { _mm256_storeu_ps(p, a.v); }
    static F8 set(float x) { return {_mm256_set1_ps(x)}; }
    static F8 max(F8 a, F8 b) { return {_mm256_max_ps(a.v, b.v)}; }
    static F8 min(F8 a, F8 b) { return {_mm256_min_ps(a.v, b.v)}; }
    float horizontal_max() const {
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
    }
    static F8 exp(F8 input) {  // eigen_sse2_exp4, eight lanes
        const __m256 one = _mm256_set1_ps(1.0f);
        __m256 x = _mm256_min_ps(input.v, _mm256_set1_ps(88.3762626647950f));
        x = _mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f));
        __m256 fx = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _mm256_set1_ps(0.5f));
        __m256 truncated = _mm256_cvtepi32_ps(_mm256_cvttps_epi32(fx));
        fx = _mm256_sub_ps(truncated, _mm256_and_ps(_mm256_cmp_ps(truncated, fx, _CMP_GT_OS), one));
        x = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(0.693359375f)));
        x = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(-2.12194440e-4f)));
        __m256 z = _mm256_mul_ps(x, x);
        __m256 y = _mm256_set1_ps(1.9875691500E-4f);
        y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(1.3981999507E-3f));
        y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(8.3334519073E-3f));
        y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(4.1665795894E-2f));
        y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(1.6666665459E-1f));
        y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(5.0000001201E-1f));
        y = _mm256_add_ps(_mm256_mul_ps(y, z), x);
        y = _mm256_add_ps(y, one);
        __m256i exponent =
            _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(0x7f)), 23);
        return {_mm256_max_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(exponent)), input.v)};
    }
};
// (free functions: GCC does not apply the target pragma to friends defined in the class)
inline F8 operator+(F8 a, F8 b) { return {_mm256_add_ps(a.v, b.v)}; }
inline F8 operator-(F8 a, F8 b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline F8 operator*(F8 a, F8 b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline F8 operator/(F8 a, F8 b) { return {_mm256_div_ps(a.v, b.v)}; }
// sum_eigen_packets with eight-float vectors: one vector of pairs holds both of Eigen's accumulators.
inline float sum_eigen_packets(const F8* q, int labels) {
    const int full = labels / 4, pairs = labels / 8;
    F4 acc0;
    if (pairs == 0) {
        acc0 = {_mm256_castps256_ps128(q[0].v)};
    } else {
        F8 both = q[0];
        for (int j = 1; j < pairs; ++j) both = both + q[j];
        acc0 = F4{_mm256_castps256_ps128(both.v)} + F4{_mm256_extractf128_ps(both.v, 1)};
        if (full > 2 * pairs) acc0 = acc0 + F4{_mm256_castps256_ps128(q[pairs].v)};
    }
    return acc0.horizontal_sum_eigen();
}
using Vec = F8;
#include "_densecrf_kernels.h"
}  // namespace avx2
#pragma GCC pop_options
#endif

// The loops for this CPU.
struct Loops {
    void (*blur_rows)(const Lattice&, int, int, const float*, float*, int32_t, int32_t);
    void (*blur_chains)(const int32_t*, size_t, int, float*);
    void (*pixel_pass)(std::vector<Kernel>&, const float*, int64_t, int, int, bool, float*);
};

Loops cpu_loops() {
#if defined(CRF_HAVE_AVX2)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && !std::getenv("CAFFE2TORCH_CRF_NO_AVX2"))
        return {avx2::blur_rows, avx2::run_blur_chains, avx2::run_pixel_pass};
#endif
    return {baseline::blur_rows, baseline::run_blur_chains, baseline::run_pixel_pass};
}

const Loops loops = cpu_loops();

// The blur of one kernel: a pass along each axis in Krähenbühl's order (0..d), each pass computing
// new = old + 0.5 * (old[n1] + old[n2]) for every vertex, done in one of two ways that give the same floats.
//  * Wavefront: where the lattice's neighbours lie within a few thousand vertices of each other in vertex
//    order (raster-ordered lattices such as the positional kernel's), pass j reads one table and writes the
//    other as in the reference, but all passes run together over chunks of vertices, pass j offset[j] chunks
//    behind pass 0, so that the rows in flight stay in the CPU cache instead of each pass streaming both
//    tables through memory. The offsets keep every read after the write it needs and every overwrite after
//    the last read of the value it replaces.
//  * Chains (all other lattices, e.g. the bilateral kernel's, whose neighbours are anywhere in the table):
//    each pass updates the table in place along the axis's chains of neighbours (see blur_chains), touching
//    only the vertices that have a neighbour on that axis and reading and writing each row once.
// Returns whether the wavefront applies; fills offset.
enum class BlurMode { kAuto, kWavefront, kChains };
BlurMode blur_mode = BlurMode::kAuto;  // tests force either way (blur_mode() below); both are exact

bool wavefront(const Lattice& lattice, int stride, int32_t* offset) {
    const int d = lattice.d;
    const int32_t chunk = kBlurChunk;
    offset[0] = 0;
    for (int axis = 1; axis <= d; ++axis)
        offset[axis] = offset[axis - 1] + std::max(lattice.ahead[axis], lattice.behind[axis - 1]) / chunk + 2;
    const size_t window_rows = static_cast<size_t>(offset[d] + 1) * chunk + lattice.ahead[0] + lattice.behind[d];
    if (blur_mode != BlurMode::kAuto) return blur_mode == BlurMode::kWavefront;
    return window_rows * 2 * stride * sizeof(float) <= kBlurWindowBytes && lattice.vertices > 2 * chunk;
}

void blur(Kernel& kernel, int stride) {
    const Lattice& lattice = kernel.lattice;
    const int d = lattice.d;
    const int32_t m = lattice.vertices;
    float* tables[2] = {kernel.tables[kernel.splat_table].data(), kernel.tables[1 - kernel.splat_table].data()};
    int32_t offset[kMaxFeatures + 1];
    if (!wavefront(lattice, stride, offset)) {
        for (int axis = 0; axis <= d; ++axis)
            loops.blur_chains(lattice.chains.data() + lattice.chain_start[axis],
                              lattice.chain_start[axis + 1] - lattice.chain_start[axis], stride, tables[0]);
        kernel.blurred_table = kernel.splat_table;
        kernel.splat_table = 1 - kernel.blurred_table;
        return;
    }
    const int32_t chunk = kBlurChunk;
    const int32_t chunks = (m + chunk - 1) / chunk;
    for (int32_t step = 0; step < chunks + offset[d]; ++step)
        for (int axis = 0; axis <= d; ++axis) {
            const int32_t c = step - offset[axis];
            if (c < 0 || c >= chunks) continue;
            loops.blur_rows(lattice, axis, stride, tables[axis % 2], tables[1 - axis % 2], c * chunk,
                            std::min(m, (c + 1) * chunk));
        }
    const int result = (d + 1) % 2;  // index into `tables` of the last pass's output
    kernel.blurred_table = result == 0 ? kernel.splat_table : 1 - kernel.splat_table;
    kernel.splat_table = 1 - kernel.blurred_table;
}

void run_pixel_pass(std::vector<Kernel>& kernels, const float* unary, int64_t points, int labels, int stride,
                    bool slice, float* out) {
    loops.pixel_pass(kernels, unary, points, labels, stride, slice, out);
}

struct Timings {
    double lattice = 0, iterations = 0;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

struct KernelInput {
    const float* features;
    int d;
    float weight;
};

// scores: labels x points (C order); out: labels x points (C order).
Timings run_inference(const float* scores, float* out, int labels, int64_t points,
                      const std::vector<KernelInput>& inputs, int max_iter) {
    Timings timings;
    auto start = std::chrono::steady_clock::now();
    std::vector<Kernel>& kernels = workspace.kernels;
    kernels.resize(inputs.size());
    for (size_t k = 0; k < inputs.size(); ++k) {
        build_lattice(inputs[k].features, inputs[k].d, points, workspace.vertex_tables, kernels[k].lattice);
        normalisation(kernels[k].lattice, kernels[k].norm);
        kernels[k].weight = inputs[k].weight;
    }
    const int stride = (labels + 7) / 8 * 8;
    int32_t offset[kMaxFeatures + 1];
    if (max_iter > 0)
        for (Kernel& kernel : kernels)
            if (!wavefront(kernel.lattice, stride, offset)) build_chains(kernel.lattice);
    timings.lattice = seconds_since(start);
    start = std::chrono::steady_clock::now();

    Buffer<float>& unary = workspace.unary;  // the scores, pixel-major, padding lanes zero
    unary.resize(static_cast<size_t>(points) * stride);
    constexpr int64_t kBlock = 256;  // transpose a block of pixels at a time, while its rows are in cache
    for (int64_t start = 0; start < points; start += kBlock) {
        const int64_t end = std::min(points, start + kBlock);
        for (int k = 0; k < labels; ++k)
            for (int64_t p = start; p < end; ++p) unary[p * stride + k] = scores[k * points + p];
        for (int64_t p = start; p < end; ++p)
            for (int k = labels; k < stride; ++k) unary[p * stride + k] = 0.0f;
    }
    // Without kernels every iteration recomputes softmax(scores): Q stays the first pass's.
    if (kernels.empty() || max_iter == 0) {
        std::vector<Kernel> none;
        run_pixel_pass(none, unary.data(), points, labels, stride, false, out);
    } else {
        for (Kernel& kernel : kernels) {
            const size_t size = static_cast<size_t>(kernel.lattice.vertices + 1) * stride;
            for (Buffer<float>& table : kernel.tables) {
                table.resize(size);
                std::fill_n(table.begin(), stride, 0.0f);  // row 0: "no vertex"
            }
            kernel.splat_table = 0;
        }
        run_pixel_pass(kernels, unary.data(), points, labels, stride, false, nullptr);
        for (int it = 0; it < max_iter; ++it) {
            for (Kernel& kernel : kernels) blur(kernel, stride);
            run_pixel_pass(kernels, unary.data(), points, labels, stride, true, it + 1 == max_iter ? out : nullptr);
        }
    }
    timings.iterations = seconds_since(start);
    return timings;
}

// ------------------------------------------------------------------------------------------------
// Python binding (buffer protocol: no numpy headers needed at build time).
// ------------------------------------------------------------------------------------------------

// A float32 C-contiguous 2-D buffer, released on scope exit.
class FloatMatrix {
public:
    FloatMatrix() = default;
    FloatMatrix(const FloatMatrix&) = delete;
    FloatMatrix& operator=(const FloatMatrix&) = delete;
    ~FloatMatrix() {
        if (held_) PyBuffer_Release(&view_);
    }
    // Returns false with a Python exception set.
    bool acquire(PyObject* object, const char* what, bool writable) {
        int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(object, &view_, flags) != 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s must be a%s C-contiguous float32 array", what,
                         writable ? " writable" : "");
            return false;
        }
        held_ = true;
        const char* format = view_.format ? view_.format : "B";
        if (format[0] == '<' || format[0] == '=' || format[0] == '@') ++format;
        if (std::strcmp(format, "f") != 0 || view_.itemsize != 4 || view_.ndim != 2) {
            PyErr_Format(PyExc_ValueError, "%s must be a 2-D float32 array (got format '%s', %d dimensions)", what,
                         view_.format ? view_.format : "B", view_.ndim);
            return false;
        }
        return true;
    }
    Py_ssize_t rows() const { return view_.shape[0]; }
    Py_ssize_t cols() const { return view_.shape[1]; }
    float* data() const { return static_cast<float*>(view_.buf); }
    size_t size() const { return static_cast<size_t>(rows()) * static_cast<size_t>(cols()); }
    bool all_finite() const {
        const float* values = data();
        const size_t n = size();
        bool finite = true;
        for (size_t i = 0; i < n; ++i) finite &= std::isfinite(values[i]);
        return finite;
    }

private:
    Py_buffer view_{};
    bool held_ = false;
};

PyObject* py_inference(PyObject*, PyObject* args) {
    PyObject *scores_obj, *out_obj, *kernels_obj;
    int max_iter;
    if (!PyArg_ParseTuple(args, "OOOi:inference", &scores_obj, &out_obj, &kernels_obj, &max_iter)) return nullptr;
    FloatMatrix scores, out;
    if (!scores.acquire(scores_obj, "scores", false) || !out.acquire(out_obj, "out", true)) return nullptr;
    const Py_ssize_t labels = scores.rows(), points = scores.cols();
    if (labels < 1 || labels > kMaxLabels || points < 1) {
        PyErr_Format(PyExc_ValueError, "scores must be (labels, pixels) with 1..%d labels and at least one pixel, "
                     "got (%zd, %zd)", kMaxLabels, labels, points);
        return nullptr;
    }
    if (out.rows() != labels || out.cols() != points) {
        PyErr_Format(PyExc_ValueError, "out must have the shape of scores (%zd, %zd), got (%zd, %zd)", labels,
                     points, out.rows(), out.cols());
        return nullptr;
    }
    if (max_iter < 0) {
        PyErr_SetString(PyExc_ValueError, "max_iter must be >= 0");
        return nullptr;
    }
    if (!scores.all_finite()) {
        PyErr_SetString(PyExc_ValueError, "scores contain NaN or infinite values");
        return nullptr;
    }
    PyObject* sequence = PySequence_Fast(kernels_obj, "kernels must be a sequence of (features, weight)");
    if (!sequence) return nullptr;
    const Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    if (count > kMaxKernels) {
        PyErr_Format(PyExc_ValueError, "at most %d kernels, got %zd", kMaxKernels, count);
        Py_DECREF(sequence);
        return nullptr;
    }
    std::vector<std::unique_ptr<FloatMatrix>> features;
    std::vector<KernelInput> inputs;
    for (Py_ssize_t k = 0; k < count; ++k) {
        PyObject* item = PySequence_Fast_GET_ITEM(sequence, k);
        PyObject* feature_obj;
        double weight;
        if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "Od", &feature_obj, &weight)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "kernel %zd must be a (features, weight) tuple", k);
            Py_DECREF(sequence);
            return nullptr;
        }
        features.push_back(std::make_unique<FloatMatrix>());
        FloatMatrix& f = *features.back();
        std::string what = "kernel " + std::to_string(k) + " features";
        if (!f.acquire(feature_obj, what.c_str(), false)) {
            Py_DECREF(sequence);
            return nullptr;
        }
        if (f.rows() < 1 || f.rows() > kMaxFeatures || f.cols() != points) {
            PyErr_Format(PyExc_ValueError, "kernel %zd features must be (d, %zd) with 1 <= d <= %d, got (%zd, %zd)",
                         k, points, kMaxFeatures, f.rows(), f.cols());
            Py_DECREF(sequence);
            return nullptr;
        }
        if (!std::isfinite(weight) || !f.all_finite()) {
            PyErr_Format(PyExc_ValueError, "kernel %zd has NaN or infinite features or weight", k);
            Py_DECREF(sequence);
            return nullptr;
        }
        if (points > (INT32_MAX - 64) / (f.rows() + 1)) {
            PyErr_Format(PyExc_ValueError, "too many pixels for the lattice (%zd)", points);
            Py_DECREF(sequence);
            return nullptr;
        }
        inputs.push_back({f.data(), static_cast<int>(f.rows()), static_cast<float>(weight)});
    }
    Py_DECREF(sequence);

    Timings timings;
    std::string error;
    PyObject* error_type = nullptr;
    Py_BEGIN_ALLOW_THREADS
    try {
        timings = run_inference(scores.data(), out.data(), static_cast<int>(labels), points, inputs, max_iter);
        if (workspace.bytes() > kWorkspaceKeepBytes) workspace.release();
    } catch (const InputError& e) {
        error = e.what();
        error_type = PyExc_ValueError;
    } catch (const std::bad_alloc&) {
        workspace.release();
        error = "out of memory in the dense CRF";
        error_type = PyExc_MemoryError;
    } catch (const std::exception& e) {
        error = std::string("dense CRF internal error: ") + e.what();
        error_type = PyExc_RuntimeError;
    }
    Py_END_ALLOW_THREADS
    if (error_type) {
        PyErr_SetString(error_type, error.c_str());
        return nullptr;
    }
    return Py_BuildValue("(dd)", timings.lattice, timings.iterations);
}

PyObject* py_lattice_vertices(PyObject*, PyObject* args) {
    PyObject* feature_obj;
    if (!PyArg_ParseTuple(args, "O:lattice_vertices", &feature_obj)) return nullptr;
    FloatMatrix f;
    if (!f.acquire(feature_obj, "features", false)) return nullptr;
    if (f.rows() < 1 || f.rows() > kMaxFeatures || f.cols() < 1 || !f.all_finite() ||
        f.cols() > (INT32_MAX - 64) / (f.rows() + 1)) {
        PyErr_Format(PyExc_ValueError, "features must be finite (d, pixels) with 1 <= d <= %d", kMaxFeatures);
        return nullptr;
    }
    int32_t vertices = 0;
    std::string error;
    PyObject* error_type = nullptr;
    Py_BEGIN_ALLOW_THREADS
    try {
        Lattice lattice;
        build_lattice(f.data(), static_cast<int>(f.rows()), f.cols(), workspace.vertex_tables, lattice);
        vertices = lattice.vertices;
    } catch (const InputError& e) {
        error = e.what();
        error_type = PyExc_ValueError;
    } catch (const std::bad_alloc&) {
        error = "out of memory in the dense CRF";
        error_type = PyExc_MemoryError;
    } catch (const std::exception& e) {
        error = std::string("dense CRF internal error: ") + e.what();
        error_type = PyExc_RuntimeError;
    }
    Py_END_ALLOW_THREADS
    if (error_type) {
        PyErr_SetString(error_type, error.c_str());
        return nullptr;
    }
    return PyLong_FromLong(vertices);
}

PyObject* py_blur_mode(PyObject*, PyObject* args) {
    const char* mode = nullptr;
    if (!PyArg_ParseTuple(args, "|z:blur_mode", &mode)) return nullptr;
    const char* names[] = {"auto", "wavefront", "chains"};
    const char* previous = names[static_cast<int>(blur_mode)];
    if (mode) {
        int chosen = -1;
        for (int i = 0; i < 3; ++i)
            if (std::strcmp(mode, names[i]) == 0) chosen = i;
        if (chosen < 0) {
            PyErr_Format(PyExc_ValueError, "blur mode must be auto, wavefront or chains, got '%s'", mode);
            return nullptr;
        }
        blur_mode = static_cast<BlurMode>(chosen);
    }
    return PyUnicode_FromString(previous);
}

PyObject* py_release_workspace(PyObject*, PyObject*) {
    workspace.release();
    Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"blur_mode", py_blur_mode, METH_VARARGS,
     "blur_mode([mode]) -> previous mode: 'auto' (the default), or force 'wavefront' or 'chains' (for tests;\n"
     "both compute the same floats). Process-wide: not for use while another thread runs the CRF."},
    {"release_workspace", py_release_workspace, METH_NOARGS,
     "Free the memory this thread keeps between calls (lattices and value tables of the last image)."},

    {"inference", py_inference, METH_VARARGS,
     "inference(scores, out, kernels, max_iter) -> (lattice_seconds, iteration_seconds)\n\n"
     "Mean-field inference of the dense CRF as pydensecrf2 computes it (Potts, NORMALIZE_AFTER).\n"
     "scores: float32 (labels, pixels) logits; out: writable float32 (labels, pixels) receiving Q;\n"
     "kernels: sequence of (features float32 (d, pixels), weight)."},
    {"lattice_vertices", py_lattice_vertices, METH_VARARGS,
     "lattice_vertices(features) -> number of permutohedral lattice vertices for float32 (d, pixels) features."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_densecrf",
                      "Native dense CRF: the same floats as pydensecrf2, faster (see caffe2torch.crf_native).", -1,
                      methods};

}  // namespace

PyMODINIT_FUNC PyInit__densecrf(void) { return PyModule_Create(&module); }
