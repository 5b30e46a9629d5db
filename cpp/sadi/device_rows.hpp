// Rows of a graph node that lives outside host memory (a GPU, an RPC worker), read and written
// through ggml_backend_tensor_get/set. Each call is a round trip (over the network for an RPC
// worker), so the rows a node needs are fetched in runs: rows at most kMaxGap rows apart share
// one call (the few rows between travel too), edited in a local copy, and each run that holds an
// edited row goes back in one call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

struct ggml_tensor;

namespace sadi {

// Copy calls made, for benchmarks (calls per decode) and tests.
struct CopyStats {
    uint64_t gets  = 0;
    uint64_t sets  = 0;
    uint64_t bytes = 0;
};

class DeviceRows {
public:
    static constexpr int32_t kMaxGap = 8;

    // Fetches `rows` (sorted, unique) of t, a [width, n_rows] F32 node with row stride t->nb[1].
    // runs=false: one call per row (how the engine copied before runs; kept for the benchmark).
    void fetch(const ggml_tensor * t, const std::vector<int32_t> & rows, int64_t width, bool runs, CopyStats & stats);
    // Row r of the local copy, or nullptr when it was not fetched.
    float * row(int32_t r);
    void mark_edited(int32_t r);
    // Writes back every run holding an edited row, one call each.
    void write_back(ggml_tensor * t, CopyStats & stats);

private:
    struct Run {
        int32_t first = 0, last = 0;  // rows first..last of t
        size_t at = 0;                // where the run starts in data_ (floats)
        bool edited = false;
    };
    Run * run_of(int32_t r);

    std::vector<Run> runs_;
    std::vector<float> data_;
    size_t stride_ = 0;      // floats from one row of t to the next
    size_t row_floats_ = 0;  // floats of one row
};

}  // namespace sadi
