#include "sadi/shape.hpp"

#include <llama.h>

#include <stdexcept>
#include <string>

namespace sadi {

const char * site_name(Site site) {
    switch (site) {
        case Site::head:   return "head";
        case Site::neuron: return "neuron";
        case Site::hidden: return "hidden";
        case Site::residual: return "residual";
        case Site::expert: return "expert";
    }
    return "?";
}

int64_t ModelShape::width(Site site) const {
    switch (site) {
        case Site::head:   return int64_t(n_head) * head_dim;
        case Site::neuron: return n_ff;
        case Site::hidden: return n_embd;
        case Site::residual: return n_embd;
        case Site::expert: return int64_t(n_expert) * n_ff_exp;
    }
    return 0;
}

int64_t ModelShape::n_units(Site site) const {
    return site == Site::head ? n_head : width(site);
}

int64_t ModelShape::unit_width(Site site) const {
    return site == Site::head ? head_dim : 1;
}

namespace {

// A scalar integer metadata value, or -1 when the key is absent or not a plain integer
// (llama_model_meta_val_str prints arrays as text, which does not parse as one integer).
long long meta_int(const llama_model * model, const std::string & key) {
    char buf[128];
    if (llama_model_meta_val_str(model, key.c_str(), buf, sizeof(buf)) < 0) {
        return -1;
    }
    try {
        size_t used = 0;
        const long long v = std::stoll(buf, &used);
        return used == std::string(buf).size() ? v : -1;
    } catch (const std::exception &) {
        return -1;
    }
}

}  // namespace

ModelShape shape_from_model(const llama_model * model) {
    if (model == nullptr) {
        throw std::runtime_error("no model: the llama_model pointer is null");
    }
    ModelShape s;
    char buf[128];
    if (llama_model_meta_val_str(model, "general.architecture", buf, sizeof(buf)) < 0) {
        throw std::runtime_error("model metadata has no general.architecture");
    }
    s.arch    = buf;
    s.n_layer = llama_model_n_layer(model);
    s.n_head  = llama_model_n_head(model);
    s.n_embd  = llama_model_n_embd(model);

    const long long n_ff = meta_int(model, s.arch + ".feed_forward_length");
    if (n_ff <= 0) {
        throw std::runtime_error("model metadata has no single " + s.arch +
                                 ".feed_forward_length (per-layer FFN sizes are not supported)");
    }
    s.n_ff = int32_t(n_ff);

    long long head_dim = meta_int(model, s.arch + ".attention.value_length");
    if (head_dim <= 0) {
        head_dim = meta_int(model, s.arch + ".attention.key_length");
    }
    if (head_dim <= 0 && s.n_head > 0) {
        head_dim = s.n_embd / s.n_head;
    }
    s.head_dim = int32_t(head_dim);

    const long long n_expert = meta_int(model, s.arch + ".expert_count");
    if (n_expert > 0) {
        const long long n_ff_exp = meta_int(model, s.arch + ".expert_feed_forward_length");
        s.n_expert = int32_t(n_expert);
        s.n_ff_exp = int32_t(n_ff_exp > 0 ? n_ff_exp : n_ff);
    }

    if (s.n_layer <= 0 || s.n_head <= 0 || s.head_dim <= 0 || s.n_embd <= 0) {
        throw std::runtime_error("model " + s.arch + " reports an empty shape (n_layer " +
                                 std::to_string(s.n_layer) + ", n_head " + std::to_string(s.n_head) +
                                 ", n_embd " + std::to_string(s.n_embd) + ")");
    }
    return s;
}

}  // namespace sadi
