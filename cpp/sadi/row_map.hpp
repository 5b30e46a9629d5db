// Which rows of which compute graph hold the tokens to read or scale.
//
// llama_decode splits a batch into ubatches of at most n_ubatch rows. With a unified KV cache
// (the hook always asks for one) llama.cpp uses its simple split: consecutive rows in batch order.
// Each ubatch is one graph compute. In a graph, most tensors have one row per ubatch token; where a
// model keeps only output rows (the last layer after get_rows), a tensor has one row per output
// token of the ubatch, in batch order.
#pragma once

#include <cstdint>
#include <vector>

namespace sadi {

struct Target {
    int32_t row     = 0;   // row within the ubatch
    int32_t out_row = -1;  // index among the ubatch's output rows; -1 when the row is no output
    int32_t slot    = 0;   // index in the decode's list of target rows (capture slot)
};

struct UbatchPlan {
    int32_t n_tokens  = 0;
    int32_t n_outputs = 0;
    std::vector<Target> steer;
    std::vector<Target> record;
};

// Plans the ubatches of one decode. `output` flags each batch row that produces logits; nullptr
// means llama.cpp's default, the last row only. Target rows must be sorted, unique and in range
// (std::invalid_argument otherwise).
std::vector<UbatchPlan> plan_ubatches(int32_t n_tokens, int32_t n_ubatch, const int8_t * output,
                                      const std::vector<int32_t> & steer_rows,
                                      const std::vector<int32_t> & record_rows);

constexpr int32_t row_absent   = -1;  // the tensor holds output rows only and this is no output
constexpr int32_t row_mismatch = -2;  // the tensor's row count fits neither layout

// The row of a tensor with `ne1` rows that holds `target` in ubatch `ub`.
int32_t tensor_row(const UbatchPlan & ub, const Target & target, int64_t ne1);

}  // namespace sadi
