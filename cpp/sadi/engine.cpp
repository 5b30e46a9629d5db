#include "sadi/engine.hpp"

#include <ggml-backend.h>
#include <ggml.h>
#include <llama.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <stdexcept>

namespace sadi {

namespace {

constexpr const char * head_node   = "kqv_out";
constexpr const char * ffn_out_node = "ffn_out";
// A mixture-of-experts FFN without a shared expert has no ffn_out node (llama's MoE graph goes
// from the weighted sum of the experts straight to the residual add): that sum is its output.
constexpr const char * moe_out_node = "ffn_moe_out";
constexpr const char * residual_node = "l_out";
// The experts' down projection (a MUL_MAT_ID): its input is the expert site, its ids the selection.
constexpr const char * moe_down_node = "ffn_moe_down";

// Some architectures give the residual sum after the FFN the FFN output's name; the FFN output
// itself is the node none of whose inputs carries its own name.
bool is_ffn_output(const ggml_tensor * t) {
    for (const ggml_tensor * src : t->src) {
        if (src != nullptr && std::strcmp(src->name, t->name) == 0) {
            return false;
        }
    }
    return true;
}

// Steps back from the FFN output over a bias add or a scale (second operand a weight) to the
// down projection; returns its activation input, or nullptr when the FFN is not a dense matmul.
const ggml_tensor * down_proj_input(const ggml_tensor * t) {
    while ((t->op == GGML_OP_ADD || t->op == GGML_OP_MUL) && t->src[1] != nullptr &&
           t->src[1]->op == GGML_OP_NONE) {
        t = t->src[0];
    }
    return t->op == GGML_OP_MUL_MAT ? t->src[1] : nullptr;
}

// The expert ids [n_expert_used, rows] that the MUL_MAT_ID producing the activation `t` (or one of
// its inputs, a few ops up) used: the same selection the down projection applies to `t`.
const ggml_tensor * expert_ids(const ggml_tensor * t, int depth = 0) {
    if (t == nullptr || depth > 4) {
        return nullptr;
    }
    if (t->op == GGML_OP_MUL_MAT_ID) {
        return t->src[2];
    }
    for (const ggml_tensor * src : t->src) {
        if (const ggml_tensor * ids = expert_ids(src, depth + 1)) {
            return ids;
        }
    }
    return nullptr;
}

std::string shape_text(const ggml_tensor * t) {
    return std::string(t->name) + " [" + std::to_string(t->ne[0]) + ", " + std::to_string(t->ne[1]) + ", " +
           std::to_string(t->ne[2]) + ", " + std::to_string(t->ne[3]) + "] " + ggml_type_name(t->type);
}

}  // namespace

bool Config::steers(Site site, int32_t il) const {
    // ranges hold only units of strength other than 0 (unit_ranges): a constant-time answer,
    // asked for every site node of every ubatch
    return !ranges[size_t(site)][size_t(il)].empty() || !adds[size_t(site)][size_t(il)].empty();
}

bool Config::any() const {
    for (int s = 0; s < n_sites; ++s) {
        for (size_t il = 0; il < ranges[size_t(s)].size(); ++il) {
            if (steers(Site(s), int32_t(il))) {
                return true;
            }
        }
    }
    return false;
}

Engine::Engine(ModelShape shape) : shape_(std::move(shape)) {
    neuron_base_.assign(size_t(shape_.n_layer), std::string());
    hidden_base_.assign(size_t(shape_.n_layer), std::string());
    expert_base_.assign(size_t(shape_.n_layer), std::string());
    new_config();  // configuration 0
    for (auto & p : problems_) {
        p = "the model's graph has not been probed yet";
    }
}

bool Engine::eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * self = static_cast<Engine *>(user_data);
    try {
        return self->on_node(t, ask);
    } catch (const std::exception & e) {
        self->fail(std::string("steering hook: ") + e.what());
    } catch (...) {
        self->fail("steering hook: unknown C++ exception");
    }
    return ask;  // ask for the node, then refuse it: that stops the compute
}

void Engine::fail(const std::string & msg) {
    if (!failed_) {
        failed_ = true;
        error_  = msg;
    }
}

void Engine::set_n_ubatch(int32_t n_ubatch) {
    if (n_ubatch <= 0) {
        throw std::invalid_argument("n_ubatch must be positive");
    }
    n_ubatch_ = n_ubatch;
}

// ---- topology probe ----

namespace {

// The device whose buffer holds t's data: a backend device's name ("CPU", "RPC0[host:port]"), or
// the buffer type's name when it names no device.
std::string device_of(const ggml_tensor * t) {
    const ggml_tensor * x = t->view_src != nullptr ? t->view_src : t;
    if (x->buffer == nullptr) {
        return "";
    }
    ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(x->buffer);
    ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
    return dev != nullptr ? ggml_backend_dev_name(dev) : ggml_backend_buft_name(buft);
}

}  // namespace

std::string Engine::site_device(Site site, int32_t il) const {
    check_layer(il);
    const auto & names = devices_[size_t(site)];
    return size_t(il) < names.size() ? names[size_t(il)] : std::string();
}

void Engine::begin_probe() {
    probing_ = true;
    probe_error_.clear();
    for (auto & seen : probe_seen_) {
        seen.assign(size_t(shape_.n_layer), 0);
    }
    for (auto & names : devices_) {
        names.assign(size_t(shape_.n_layer), std::string());
    }
    std::fill(neuron_base_.begin(), neuron_base_.end(), std::string());
    std::fill(hidden_base_.begin(), hidden_base_.end(), std::string());
}

void Engine::probe_node(const ggml_tensor * t) {
    NodeName nn;
    if (!parse_node_name(t->name, nn) || nn.il >= shape_.n_layer) {
        return;
    }
    const size_t il = size_t(nn.il);
    auto check_width = [&](const ggml_tensor * x, Site site) {
        if (x->ne[0] != shape_.width(site) && probe_error_.empty()) {
            probe_error_ = "node " + shape_text(x) + " should be " + std::to_string(shape_.width(site)) +
                           " wide for the " + site_name(site) + " site of this model";
        }
    };
    if (nn.base == head_node && !probe_seen_[size_t(Site::head)][il]) {
        probe_seen_[size_t(Site::head)][il] = 1;
        devices_[size_t(Site::head)][il] = device_of(t);
        check_width(t, Site::head);
    } else if (nn.base == residual_node && !probe_seen_[size_t(Site::residual)][il]) {
        probe_seen_[size_t(Site::residual)][il] = 1;
        devices_[size_t(Site::residual)][il] = device_of(t);
        check_width(t, Site::residual);
    } else if (nn.base == moe_down_node && t->op == GGML_OP_MUL_MAT_ID && shape_.n_expert > 0) {
        NodeName an;
        const ggml_tensor * act = t->src[1];
        if (act != nullptr && parse_node_name(act->name, an) && an.il == nn.il && !probe_seen_[size_t(Site::expert)][il]) {
            probe_seen_[size_t(Site::expert)][il] = 1;
            devices_[size_t(Site::expert)][il] = device_of(act);
            expert_base_[il] = std::string(an.base);
            if (act->ne[0] != shape_.n_ff_exp && probe_error_.empty()) {
                probe_error_ = "node " + shape_text(act) + " should be " + std::to_string(shape_.n_ff_exp) +
                               " wide for the expert site of this model";
            }
        }
    } else if (nn.base == moe_out_node) {
        if (hidden_base_[il].empty()) {  // an ffn_out of the same layer takes over (MoE + shared expert)
            hidden_base_[il] = moe_out_node;
            probe_seen_[size_t(Site::hidden)][il] = 1;
            devices_[size_t(Site::hidden)][il] = device_of(t);
            check_width(t, Site::hidden);
        }
    } else if (nn.base == ffn_out_node && is_ffn_output(t) && hidden_base_[il] != ffn_out_node) {
        hidden_base_[il] = ffn_out_node;
        probe_seen_[size_t(Site::hidden)][il] = 1;
        devices_[size_t(Site::hidden)][il] = device_of(t);
        check_width(t, Site::hidden);
        const ggml_tensor * act = down_proj_input(t);
        NodeName an;
        if (act != nullptr && parse_node_name(act->name, an) && an.il == nn.il) {
            probe_seen_[size_t(Site::neuron)][il] = 1;
            devices_[size_t(Site::neuron)][il] = device_of(act);
            neuron_base_[il] = std::string(an.base);
            check_width(act, Site::neuron);
        }
    }
}

void Engine::end_probe() {
    probing_ = false;
    const std::string missing[n_sites] = {"node kqv_out-", "dense FFN (an input of ffn_down) in layer ", "node ffn_out-",
                                          "node l_out-", "mixture-of-experts FFN (ffn_moe_down) in layer "};
    for (int s = 0; s < n_sites; ++s) {
        problems_[size_t(s)].clear();
        for (int32_t il = 0; il < shape_.n_layer; ++il) {
            if (!probe_seen_[size_t(s)][size_t(il)]) {
                problems_[size_t(s)] = "the " + shape_.arch + " graph has no " + missing[s] + std::to_string(il) +
                                       ", so the " + site_name(Site(s)) + " site cannot be read or steered";
                break;
            }
        }
        if (problems_[size_t(s)].empty() && !probe_error_.empty()) {
            problems_[size_t(s)] = probe_error_;
        }
    }
    // kqv_out-0 marks where each ubatch's graph begins: without it no site can be placed.
    if (!problems_[size_t(Site::head)].empty()) {
        for (int s = 1; s < n_sites; ++s) {
            problems_[size_t(s)] = problems_[size_t(Site::head)];
        }
    }
}

void Engine::check_layer(int32_t il) const {
    if (il < 0 || il >= shape_.n_layer) {
        throw std::out_of_range("layer " + std::to_string(il) + " is outside [0, " + std::to_string(shape_.n_layer) + ")");
    }
}

std::string Engine::site_node(Site site, int32_t il) const {
    check_layer(il);
    std::string base;
    switch (site) {
        case Site::head: base = head_node; break;
        case Site::residual: base = residual_node; break;
        case Site::neuron: base = neuron_base_[size_t(il)]; break;
        case Site::hidden: base = hidden_base_[size_t(il)]; break;
        case Site::expert: base = expert_base_[size_t(il)]; break;
    }
    return base.empty() || !problems_[size_t(site)].empty() ? std::string() : base + "-" + std::to_string(il);
}

// ---- configurations ----

int32_t Engine::new_config() {
    Config c;
    for (auto & r : c.ranges) {
        r.assign(size_t(shape_.n_layer), {});
    }
    for (auto & a : c.adds) {
        a.assign(size_t(shape_.n_layer), {});
    }
    for (size_t i = 1; i < configs_.size(); ++i) {
        if (config_free_[i]) {
            configs_[i]     = std::move(c);
            config_free_[i] = 0;
            return int32_t(i);
        }
    }
    configs_.push_back(std::move(c));
    config_free_.push_back(0);
    return int32_t(configs_.size() - 1);
}

void Engine::free_config(int32_t config) {
    if (config == 0) {
        throw std::invalid_argument("configuration 0 always exists; clear it instead");
    }
    live(config) = Config();
    config_free_[size_t(config)] = 1;
}

Config & Engine::live(int32_t config) {
    return const_cast<Config &>(static_cast<const Engine *>(this)->live(config));
}

const Config & Engine::live(int32_t config) const {
    if (config < 0 || config >= int32_t(configs_.size()) || config_free_[size_t(config)]) {
        throw std::out_of_range("no steering configuration " + std::to_string(config));
    }
    return configs_[size_t(config)];
}

void Engine::set_mask(int32_t config, Site site, int32_t il, const std::vector<int32_t> & units,
                      const std::vector<float> & deltas) {
    Config & c = live(config);
    if (!problems_[size_t(site)].empty()) {
        throw std::invalid_argument(problems_[size_t(site)]);
    }
    check_layer(il);
    c.ranges[size_t(site)][size_t(il)] = unit_ranges(units, deltas, shape_.unit_width(site), shape_.n_units(site));
}

void Engine::clear_mask(int32_t config) {
    for (auto & per_layer : live(config).ranges) {
        for (auto & r : per_layer) {
            r.clear();
        }
    }
}

void Engine::set_add(int32_t config, Site site, int32_t il, const std::vector<float> & values) {
    Config & c = live(config);
    if (!problems_[size_t(site)].empty()) {
        throw std::invalid_argument(problems_[size_t(site)]);
    }
    check_layer(il);
    if (site == Site::expert && !values.empty()) {
        throw std::invalid_argument("the expert site takes no added vectors (an expert's slot changes from token to token)");
    }
    if (!values.empty() && int64_t(values.size()) != shape_.width(site)) {
        throw std::invalid_argument("a vector to add to the " + std::string(site_name(site)) + " site has " +
                                    std::to_string(values.size()) + " values; it needs " +
                                    std::to_string(shape_.width(site)));
    }
    c.adds[size_t(site)][size_t(il)] = values;
}

void Engine::set_gate(int32_t config, int32_t il, const std::vector<float> & direction, const std::vector<float> & center,
                      float threshold) {
    Config & c = live(config);
    if (!problems_[size_t(Site::residual)].empty()) {
        throw std::invalid_argument(problems_[size_t(Site::residual)]);
    }
    check_layer(il);
    if (il == shape_.n_layer - 1) {  // nothing above the last layer is left to steer
        throw std::invalid_argument("a gate at the last layer (" + std::to_string(il) + ") leaves no layer to steer");
    }
    const size_t width = size_t(shape_.n_embd);
    if (direction.size() != width || center.size() != width) {
        throw std::invalid_argument("a gate's direction and center need " + std::to_string(width) + " values, got " +
                                    std::to_string(direction.size()) + " and " + std::to_string(center.size()));
    }
    if (!std::isfinite(threshold)) {
        throw std::invalid_argument("a gate's threshold must be finite");
    }
    c.gate = Gate{il, direction, center, threshold};
}

void Engine::clear_adds(int32_t config) {
    for (auto & per_layer : live(config).adds) {
        for (auto & a : per_layer) {
            a.clear();
        }
    }
}

void Engine::set_record(Site site, bool on) {
    if (on && !problems_[size_t(site)].empty()) {
        throw std::invalid_argument(problems_[size_t(site)]);
    }
    record_[size_t(site)] = on;
}

void Engine::set_accumulate_slot(int32_t slot) {
    if (slot < -1) {
        throw std::invalid_argument("accumulator slot must be >= 0, or -1 to stop");
    }
    if (slot >= 0) {
        this->slot(slot);
    }
    acc_slot_ = slot;
}

Engine::Accumulator & Engine::slot(int32_t index) {
    while (int32_t(slots_.size()) <= index) {
        Accumulator acc;
        for (int s = 0; s < n_sites; ++s) {  // recorded sites only: an expert row can be wide
            if (record_[size_t(s)]) {
                acc.sums[size_t(s)].assign(size_t(shape_.n_layer * shape_.width(Site(s))), 0.0);
                acc.counts[size_t(s)].assign(size_t(shape_.n_layer), 0);
            }
        }
        slots_.push_back(std::move(acc));
    }
    return slots_[size_t(index)];
}

void Engine::clear_records() {
    for (auto & c : captured_) {
        c.clear();
        c.shrink_to_fit();
    }
    captured_pos_.clear();
    slots_.clear();
    acc_slot_ = -1;
}

const std::vector<double> & Engine::sums(int32_t slot, Site site) const {
    if (slot < 0 || slot >= n_slots()) {
        throw std::out_of_range("no accumulator slot " + std::to_string(slot));
    }
    return slots_[size_t(slot)].sums[size_t(site)];
}

const std::vector<int64_t> & Engine::counts(int32_t slot, Site site) const {
    if (slot < 0 || slot >= n_slots()) {
        throw std::out_of_range("no accumulator slot " + std::to_string(slot));
    }
    return slots_[size_t(slot)].counts[size_t(site)];
}

// ---- one decode ----

void Engine::begin_decode(const llama_batch & batch, const std::vector<int32_t> & steer_rows,
                          const std::vector<int32_t> & record_rows, const std::vector<int32_t> & steer_configs,
                          const std::vector<int32_t> & record_slots, const std::vector<int8_t> & steer_decide) {
    // checks first: a bad list throws before any state changes
    if (!steer_configs.empty() && steer_configs.size() != steer_rows.size()) {
        throw std::invalid_argument("one configuration per steered row is needed");
    }
    if (!steer_decide.empty() && steer_decide.size() != steer_rows.size()) {
        throw std::invalid_argument("one gate flag per steered row is needed");
    }
    if (!record_slots.empty() && record_slots.size() != record_rows.size()) {
        throw std::invalid_argument("one accumulator slot per recorded row is needed");
    }
    bool steer = false;
    std::vector<char> checked(configs_.size(), 0);  // each configuration looked at once, not once per row
    for (size_t i = 0; i < steer_rows.size(); ++i) {
        const int32_t c = steer_configs.empty() ? 0 : steer_configs[i];
        const Config & config = live(c);
        const bool decides = !steer_decide.empty() && steer_decide[i] != 0;
        if (decides && config.gate.layer < 0) {
            throw std::invalid_argument("steered row " + std::to_string(steer_rows[i]) +
                                        " is flagged to decide a gate, but its configuration has none");
        }
        steer = steer || decides;  // a gate is scored even when its configuration changes nothing
        if (!checked[size_t(c)]) {
            checked[size_t(c)] = 1;
            steer = steer || config.any();
        }
    }
    for (int32_t s : record_slots) {
        if (s < 0) {
            throw std::invalid_argument("accumulator slots must be >= 0");
        }
    }
    const bool any_site = std::find(record_.begin(), record_.end(), true) != record_.end();
    const bool record = any_site && !record_rows.empty() && (capture_ || acc_slot_ >= 0 || !record_slots.empty());
    static const std::vector<int32_t> none;
    std::vector<UbatchPlan> plans;
    if (steer || record) {
        plans = plan_ubatches(batch.n_tokens, n_ubatch_, batch.logits, steer ? steer_rows : none,
                              record ? record_rows : none);
    }
    for (int32_t s : record ? record_slots : none) {
        slot(s);
    }
    steer_configs_ = steer_configs.empty() ? std::vector<int32_t>(steer_rows.size(), 0) : steer_configs;
    steer_decide_  = steer_decide.empty() ? std::vector<int8_t>(steer_rows.size(), 0) : steer_decide;
    gate_scores_.assign(steer_rows.size(), std::numeric_limits<double>::quiet_NaN());
    record_slots_  = record_slots;
    failed_     = false;
    error_.clear();
    ubatch_     = -1;
    steer_now_  = steer;
    record_now_ = record;
    active_     = steer || record;
    plans_      = std::move(plans);

    if (record_now_ && capture_) {
        capture_base_ = n_captured();
        for (int32_t row : record_rows) {
            captured_pos_.push_back(batch.pos != nullptr ? batch.pos[row] : -1);
        }
        for (int s = 0; s < n_sites; ++s) {
            if (record_[size_t(s)]) {
                const size_t n = size_t(n_captured() * shape_.n_layer * shape_.width(Site(s)));
                captured_[size_t(s)].resize(n, std::numeric_limits<float>::quiet_NaN());
            }
        }
    }
}

std::string Engine::end_decode() {
    if (active_ && !failed_ && ubatch_ + 1 != int32_t(plans_.size())) {
        fail("llama.cpp computed " + std::to_string(ubatch_ + 1) + " graphs for a batch planned as " +
             std::to_string(plans_.size()) + " ubatches of at most " + std::to_string(n_ubatch_) +
             " tokens; rows could not be placed (is n_ubatch right?)");
    }
    active_ = false;
    plans_.clear();
    std::string err;
    err.swap(error_);
    failed_ = false;
    return err;
}

// ---- the callback ----

int Engine::site_of(const ggml_tensor * t, const NodeName & nn) const {
    if (nn.base == head_node) {
        return int(Site::head);
    }
    if (nn.base == neuron_base_[size_t(nn.il)]) {
        return int(Site::neuron);
    }
    if (nn.base == hidden_base_[size_t(nn.il)] && (nn.base != ffn_out_node || is_ffn_output(t))) {
        return int(Site::hidden);
    }
    if (nn.base == residual_node) {
        return int(Site::residual);
    }
    if (!expert_base_[size_t(nn.il)].empty() && nn.base == expert_base_[size_t(nn.il)]) {
        return int(Site::expert);
    }
    return -1;
}

bool Engine::on_node(ggml_tensor * t, bool ask) {
    if (probing_) {
        if (ask) {
            probe_node(t);
        }
        return false;
    }
    if (!active_) {
        return false;
    }
    if (failed_) {
        return ask;
    }
    NodeName nn;
    if (!parse_node_name(t->name, nn) || nn.il >= shape_.n_layer) {
        return false;
    }
    const int s = site_of(t, nn);
    if (s < 0) {
        return false;
    }
    if (ask) {
        if (s == int(Site::head) && nn.il == 0 && ++ubatch_ >= int32_t(plans_.size())) {
            fail("llama.cpp computed more graphs than the " + std::to_string(plans_.size()) +
                 " planned ubatches of this decode");
            return true;
        }
        if (ubatch_ < 0) {
            fail(std::string("node ") + t->name + " came before kqv_out-0; cannot tell which ubatch it belongs to");
            return true;
        }
        return wanted(t, Site(s), nn.il);
    }
    return process(t, Site(s), nn.il);
}

bool Engine::wanted(const ggml_tensor * t, Site site, int32_t il) const {
    const UbatchPlan & ub = plans_[size_t(ubatch_)];
    const int64_t rows = site == Site::expert ? t->ne[2] : t->ne[1];  // experts: [n_ff_exp, n_used, rows]
    if (steer_now_) {
        for (const Target & tg : ub.steer) {
            const Config & c = configs_[size_t(steer_configs_[size_t(tg.slot)])];
            const bool decides = steer_decide_[size_t(tg.slot)] != 0;
            const bool gate_here = decides && site == Site::residual && il == c.gate.layer;
            // a deciding row's layers at or below the gate are not steered: the decision comes after them
            const bool edit = c.steers(site, il) && (!decides || il > c.gate.layer);
            if ((gate_here || edit) && tensor_row(ub, tg, rows) != row_absent) {
                return true;
            }
        }
    }
    if (record_now_ && record_[size_t(site)]) {
        for (const Target & tg : ub.record) {
            if (tensor_row(ub, tg, rows) != row_absent) {
                return true;
            }
        }
    }
    return false;
}

bool Engine::on_host(const ggml_tensor * t) const {
    const ggml_backend_buffer_t buf = t->view_src != nullptr ? t->view_src->buffer : t->buffer;
    return !force_copy_ && buf != nullptr && ggml_backend_buffer_is_host(buf);
}

int32_t Engine::row_in(const UbatchPlan & ub, const Target & tg, const ggml_tensor * t, int64_t rows) {
    const int32_t r = tensor_row(ub, tg, rows);
    if (r == row_mismatch) {
        fail("node " + shape_text(t) + " has " + std::to_string(rows) + " rows, but its ubatch has " +
             std::to_string(ub.n_tokens) + " tokens and " + std::to_string(ub.n_outputs) + " outputs");
    }
    return r;
}

void Engine::record_row(Site site, int32_t il, const Target & tg, const float * x) {
    const int64_t width = shape_.width(site);
    if (capture_) {
        const int64_t row = capture_base_ + tg.slot;
        std::memcpy(captured_[size_t(site)].data() + (row * shape_.n_layer + il) * width, x, size_t(width) * sizeof(float));
    }
    const int32_t to = record_slots_.empty() ? acc_slot_ : record_slots_[size_t(tg.slot)];
    if (to >= 0) {
        Accumulator & acc = slots_[size_t(to)];
        accumulate_row(acc.sums[size_t(site)].data() + int64_t(il) * width, x, width);
        acc.counts[size_t(site)][size_t(il)] += 1;
    }
}

bool Engine::process(ggml_tensor * t, Site site, int32_t il) {
    if (site == Site::expert) {
        return process_experts(t, il);
    }
    const int64_t width = shape_.width(site);
    if (t->type != GGML_TYPE_F32 || t->nb[0] != sizeof(float) || t->ne[0] != width || t->ne[2] != 1 || t->ne[3] != 1) {
        fail("node " + shape_text(t) + " is not the F32 [" + std::to_string(width) + ", rows] tensor the " +
             site_name(site) + " site expects");
        return false;
    }
    const UbatchPlan & ub = plans_[size_t(ubatch_)];
    const bool host = on_host(t);
    if (!host && !fetch_rows(t, site, il, ub)) {
        return false;
    }

    // Returns the target's row of t (in place on a host buffer, else the fetched copy), or nullptr.
    auto row_of = [&](const Target & tg) -> float * {
        const int32_t r = row_in(ub, tg, t, t->ne[1]);
        if (r < 0) {
            return nullptr;
        }
        if (host) {
            return reinterpret_cast<float *>(static_cast<char *>(t->data) + size_t(r) * t->nb[1]);
        }
        return device_.row(r);
    };

    if (record_now_ && record_[size_t(site)]) {
        for (const Target & tg : ub.record) {
            if (const float * x = row_of(tg)) {
                record_row(site, il, tg, x);
            }
        }
    }
    if (steer_now_ && site == Site::residual) {  // gates read the residual before any edit of this node
        for (const Target & tg : ub.steer) {
            const Config & c = configs_[size_t(steer_configs_[size_t(tg.slot)])];
            if (steer_decide_[size_t(tg.slot)] != 0 && c.gate.layer == il) {
                if (const float * x = row_of(tg)) {
                    gate_scores_[size_t(tg.slot)] = gate_score(x, c.gate.direction.data(), c.gate.center.data(), width);
                }
            }
        }
    }
    if (steer_now_) {
        for (const Target & tg : ub.steer) {
            const Config & c = configs_[size_t(steer_configs_[size_t(tg.slot)])];
            if (!c.steers(site, il) || !gate_allows(tg, c, il)) {
                continue;
            }
            float * x = row_of(tg);
            if (x == nullptr) {
                continue;
            }
            const std::vector<float> & add = c.adds[size_t(site)][size_t(il)];
            scale_ranges(x, c.ranges[size_t(site)][size_t(il)]);
            if (!add.empty()) {
                add_row(x, add.data(), width);
            }
            if (!host) {
                device_.mark_edited(tensor_row(ub, tg, t->ne[1]));
            }
        }
    }
    if (!host) {
        device_.write_back(t, copy_stats_);
    }
    return !failed_;
}

// The rows of device node t that this ubatch reads (records, a gate's score) or edits, fetched.
bool Engine::fetch_rows(const ggml_tensor * t, Site site, int32_t il, const UbatchPlan & ub) {
    std::vector<int32_t> rows;
    auto need = [&](const Target & tg) {
        const int32_t r = row_in(ub, tg, t, t->ne[1]);
        if (r >= 0) {
            rows.push_back(r);
        }
    };
    if (record_now_ && record_[size_t(site)]) {
        for (const Target & tg : ub.record) {
            need(tg);
        }
    }
    if (steer_now_) {
        for (const Target & tg : ub.steer) {
            const Config & c = configs_[size_t(steer_configs_[size_t(tg.slot)])];
            const bool scores = site == Site::residual && steer_decide_[size_t(tg.slot)] != 0 && c.gate.layer == il;
            if (scores || c.steers(site, il)) {
                need(tg);
            }
        }
    }
    if (failed_) {
        return false;
    }
    std::sort(rows.begin(), rows.end());
    rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
    device_.fetch(t, rows, shape_.width(site), copy_runs_, copy_stats_);
    return true;
}

bool Engine::gate_allows(const Target & tg, const Config & c, int32_t il) {
    if (steer_decide_[size_t(tg.slot)] == 0) {
        return true;
    }
    if (il <= c.gate.layer) {
        return false;
    }
    const double score = gate_scores_[size_t(tg.slot)];
    if (std::isnan(score)) {
        fail("the gate of a steered row was not scored before layer " + std::to_string(il) + " (node l_out-" +
             std::to_string(c.gate.layer) + " not computed first)");
        return false;
    }
    return score >= double(c.gate.threshold);
}

// The expert site: t is the activation [n_ff_exp, n_expert_used, rows] that the experts' down
// projection reads; slot k of a row belongs to expert ids[k, row]. A recorded row is the dense
// [n_expert * n_ff_exp] vector with zeros for the experts the token did not select; steering
// scales the masked units of each selected expert in its slot.
bool Engine::process_experts(ggml_tensor * t, int32_t il) {
    const int64_t n_ff = shape_.n_ff_exp, n_used = t->ne[1], width = shape_.width(Site::expert);
    if (t->type != GGML_TYPE_F32 || t->nb[0] != sizeof(float) || t->ne[0] != n_ff || t->ne[3] != 1) {
        fail("node " + shape_text(t) + " is not the F32 [" + std::to_string(n_ff) + ", n_expert_used, rows] tensor the expert site expects");
        return false;
    }
    const ggml_tensor * ids = expert_ids(t);
    if (ids == nullptr || ids->type != GGML_TYPE_I32 || ids->ne[0] != n_used || ids->ne[1] != t->ne[2] ||
        ids->nb[0] != sizeof(int32_t)) {
        fail("node " + shape_text(t) + ": the expert selection of its rows was not found");
        return false;
    }
    const UbatchPlan & ub = plans_[size_t(ubatch_)];
    const bool host = on_host(t);
    const size_t slot_bytes = size_t(n_ff) * sizeof(float);
    std::vector<int32_t> chosen(static_cast<size_t>(n_used));
    std::vector<float> act(static_cast<size_t>(n_ff * n_used));

    // Reads row r's slots into act and its expert ids into chosen; false when r is not in t.
    auto load = [&](const Target & tg, int32_t & r) -> bool {
        r = row_in(ub, tg, t, t->ne[2]);
        if (r < 0) {
            return false;
        }
        ggml_backend_tensor_get(const_cast<ggml_tensor *>(ids), chosen.data(), size_t(r) * ids->nb[1], size_t(n_used) * sizeof(int32_t));
        if (!host) {
            copy_stats_.gets += 1;
        }
        for (int64_t k = 0; k < n_used; ++k) {
            if (chosen[size_t(k)] < 0 || chosen[size_t(k)] >= shape_.n_expert) {
                fail("node " + shape_text(t) + ": expert id " + std::to_string(chosen[size_t(k)]) + " out of range");
                return false;
            }
            const size_t offset = size_t(r) * t->nb[2] + size_t(k) * t->nb[1];
            if (host) {
                std::memcpy(act.data() + k * n_ff, static_cast<const char *>(t->data) + offset, slot_bytes);
            } else {
                ggml_backend_tensor_get(t, act.data() + k * n_ff, offset, slot_bytes);
                copy_stats_.gets += 1;
            }
        }
        return true;
    };

    int32_t r = 0;
    if (record_now_ && record_[size_t(Site::expert)]) {
        std::vector<float> dense(static_cast<size_t>(width));
        for (const Target & tg : ub.record) {
            if (!load(tg, r)) {
                if (failed_) return false;
                continue;
            }
            std::fill(dense.begin(), dense.end(), 0.0f);
            for (int64_t k = 0; k < n_used; ++k) {
                std::memcpy(dense.data() + int64_t(chosen[size_t(k)]) * n_ff, act.data() + k * n_ff, slot_bytes);
            }
            record_row(Site::expert, il, tg, dense.data());
        }
    }
    if (steer_now_) {
        for (const Target & tg : ub.steer) {
            const Config & c = configs_[size_t(steer_configs_[size_t(tg.slot)])];
            if (!c.steers(Site::expert, il) || !gate_allows(tg, c, il) || !load(tg, r)) {
                if (failed_) return false;
                continue;
            }
            for (int64_t k = 0; k < n_used; ++k) {
                // the mask's ranges that fall in expert chosen[k]'s units, shifted into its slot
                const int64_t lo = int64_t(chosen[size_t(k)]) * n_ff;
                std::vector<Range> mine;
                for (const Range & rg : c.ranges[size_t(Site::expert)][size_t(il)]) {
                    const int64_t b = std::max(rg.begin, lo), e = std::min(rg.begin + rg.len, lo + n_ff);
                    if (b < e) {
                        mine.push_back(Range{b - lo, e - b, rg.delta});
                    }
                }
                if (mine.empty()) {
                    continue;
                }
                float * x = act.data() + k * n_ff;
                scale_ranges(x, mine);
                const size_t offset = size_t(r) * t->nb[2] + size_t(k) * t->nb[1];
                if (host) {
                    std::memcpy(static_cast<char *>(t->data) + offset, x, slot_bytes);
                } else {
                    ggml_backend_tensor_set(t, x, offset, slot_bytes);
                    copy_stats_.sets += 1;
                }
            }
        }
    }
    return !failed_;
}

}  // namespace sadi
