// Model shape and the three SADI sites. Knows llama.h, nothing of Python.
#pragma once

#include <cstdint>
#include <string>

struct llama_model;

namespace sadi {

// The kinds of units SADI steers (see docs/engine.md), the residual stream after each layer (l_out),
// which baselines read and add to (CAA, control vectors), and the neurons of a mixture-of-experts
// FFN: unit e * n_ff_exp + j is neuron j of expert e.
enum class Site : int { head = 0, neuron = 1, hidden = 2, residual = 3, expert = 4 };
constexpr int n_sites = 5;

const char * site_name(Site site);

struct ModelShape {
    std::string arch;
    int32_t n_layer  = 0;
    int32_t n_head   = 0;
    int32_t head_dim = 0;  // value head size: kqv_out is n_head*head_dim wide
    int32_t n_ff     = 0;
    int32_t n_embd   = 0;
    int32_t n_expert = 0;  // experts of a mixture-of-experts FFN (0: dense)
    int32_t n_ff_exp = 0;  // neurons of one expert

    // values in one row of the site's tensor
    int64_t width(Site site) const;
    // units SADI ranks and masks (heads, neurons, hidden elements)
    int64_t n_units(Site site) const;
    // values per unit: head_dim for heads, 1 otherwise
    int64_t unit_width(Site site) const;
};

// Reads the shape from the model's hyper-parameters and GGUF metadata.
// Throws std::runtime_error naming the missing key.
ModelShape shape_from_model(const llama_model * model);

}  // namespace sadi
