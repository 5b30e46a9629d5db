// The steering engine: one per llama_context, handed to llama.cpp as the eval callback's user_data.
//
// Per decode the caller says which batch rows to read (record) and which to scale (steer), and
// with which steering configuration each steered row is edited: several configurations live in
// the engine at once (configuration 0 always exists), so one decode can hold rows of many. The
// engine maps the rows onto the rows of each ubatch's graph, asks the scheduler only for the site
// nodes that hold a row some configuration changes there, and reads or edits them in place (host
// buffers) or through ggml_backend_tensor_get/set (device buffers). The callback never throws: it records the first
// error, cancels the rest of the compute and the caller collects the error with end_decode().
#pragma once

#include "sadi/device_rows.hpp"
#include "sadi/kernels.hpp"
#include "sadi/node_name.hpp"
#include "sadi/row_map.hpp"
#include "sadi/shape.hpp"

#include <array>
#include <cstdint>
#include <string>
#include <vector>

struct ggml_tensor;
struct llama_batch;

namespace sadi {

// One steering configuration: a' = a + delta_u * a on each masked unit u (a strength per unit:
// one mask's delta, a mask weighted by its statistics, or several masks' deltas summed), then +
// the added vector, per (site, layer).
// A condition on the input: the cosine between (residual after layer `layer` - center) and
// `direction` at a sequence's deciding row; the configuration steers that sequence only when the
// score is >= threshold. layer -1: no gate.
struct Gate {
    int32_t layer = -1;
    std::vector<float> direction;
    std::vector<float> center;
    float threshold = 0.0f;
};

struct Config {
    std::array<std::vector<std::vector<Range>>, n_sites> ranges;  // [site][layer], each with its delta
    std::array<std::vector<std::vector<float>>, n_sites> adds;    // [site][layer], empty: none
    Gate gate;

    // True when this configuration changes (site, layer): a unit with delta != 0, or a vector.
    bool steers(Site site, int32_t il) const;
    bool any() const;
};

class Engine {
public:
    explicit Engine(ModelShape shape);

    // The ggml_backend_sched_eval_callback; user_data is the Engine.
    static bool eval_callback(ggml_tensor * t, bool ask, void * user_data);

    const ModelShape & shape() const { return shape_; }

    // The context's n_ubatch: how llama_decode splits a batch.
    void set_n_ubatch(int32_t n_ubatch);
    // Use ggml_backend_tensor_get/set even on host buffers (tests the device path on the CPU).
    void set_force_copy(bool on) { force_copy_ = on; }
    bool force_copy() const { return force_copy_; }
    // Device nodes: fetch the rows a node needs in runs (default), or one call per row (benchmarks).
    void set_copy_runs(bool on) { copy_runs_ = on; }
    bool copy_runs() const { return copy_runs_; }
    // ggml_backend_tensor_get/set calls made since the engine was made (device nodes only).
    const CopyStats & copy_stats() const { return copy_stats_; }
    // The device that computes the site's node of layer il, as the probe found it ("CPU",
    // "RPC0[127.0.0.1:50052]", ...); "" when this model has no such node.
    std::string site_device(Site site, int32_t il) const;

    // Topology probe: decode one token between these calls. The engine then knows each layer's
    // neuron node and which sites this model's graph has.
    void begin_probe();
    void end_probe();
    // Empty when the site can be read and steered, else why not (names the missing tensor).
    const std::string & site_problem(Site site) const { return problems_[size_t(site)]; }
    // The graph node the site reads in layer il, "" when this model has none: heads kqv_out-3, neurons
    // the input of ffn_down (e.g. ffn_geglu-3), hidden the FFN output (ffn_out-3, or ffn_moe_out-3
    // for a MoE FFN without one), experts the input of ffn_moe_down (e.g. ffn_moe_swiglu-3), residual l_out-3.
    std::string site_node(Site site, int32_t il) const;

    // Configurations: 0 always exists; new_config() makes an empty one and returns its id (ids of
    // freed configurations are reused); free_config(id) empties and releases it (not 0).
    int32_t new_config();
    void free_config(int32_t config);
    int32_t n_configs() const { return int32_t(configs_.size()); }

    // Steering of one configuration: the units of each (site, layer) and each unit's delta.
    void set_mask(int32_t config, Site site, int32_t il, const std::vector<int32_t> & units,
                  const std::vector<float> & deltas);
    void clear_mask(int32_t config);
    // A vector [width] added to the steered rows of (site, layer) after the scaling; empty removes it.
    void set_add(int32_t config, Site site, int32_t il, const std::vector<float> & values);
    void clear_adds(int32_t config);
    // True when the configuration would change anything: a unit with delta != 0, or a vector to add.
    bool steering(int32_t config) const { return live(config).any(); }
    // A gate on the configuration (direction and center n_embd wide, layer below the last), or none.
    void set_gate(int32_t config, int32_t il, const std::vector<float> & direction, const std::vector<float> & center,
                  float threshold);
    void clear_gate(int32_t config) { live(config).gate = Gate(); }
    int32_t gate_layer(int32_t config) const { return live(config).gate.layer; }

    // Recording: which sites, and what to keep of each recorded row.
    void set_record(Site site, bool on);
    void set_capture(bool on) { capture_ = on; }
    // Add recorded rows into accumulator `slot` (>= 0), or stop accumulating (-1).
    void set_accumulate_slot(int32_t slot);
    void clear_records();

    int64_t n_captured() const { return int64_t(captured_pos_.size()); }
    // [n_captured][n_layer][width] floats; NaN where the graph held no such row.
    const std::vector<float> & captured(Site site) const { return captured_[size_t(site)]; }
    const std::vector<int32_t> & captured_pos() const { return captured_pos_; }
    int32_t n_slots() const { return int32_t(slots_.size()); }
    // [n_layer][width] sums and [n_layer] row counts of accumulator `slot`.
    const std::vector<double> & sums(int32_t slot, Site site) const;
    const std::vector<int64_t> & counts(int32_t slot, Site site) const;

    // Brackets one llama_decode of `batch`. Rows are batch rows, sorted and unique. steer_configs[i]
    // is the configuration of steer_rows[i] (empty: configuration 0 for every row); record_slots[i]
    // the accumulator slot of record_rows[i] (empty: the slot set by set_accumulate_slot).
    // steer_decide[i] != 0: steer_rows[i] is where its configuration's gate decides (the score is
    // read at the gate layer; layers above it are steered only if the gate fires, layers at or
    // below it not at all on this row). Other steered rows are steered whatever the gate.
    void begin_decode(const llama_batch & batch, const std::vector<int32_t> & steer_rows,
                      const std::vector<int32_t> & record_rows, const std::vector<int32_t> & steer_configs = {},
                      const std::vector<int32_t> & record_slots = {}, const std::vector<int8_t> & steer_decide = {});
    // Ends the decode; returns the error the callback met, or "" when all went well.
    std::string end_decode();
    // Per steered row of the last decode: its gate's score where it decided, NaN elsewhere.
    const std::vector<double> & gate_scores() const { return gate_scores_; }

private:
    struct Accumulator {
        std::array<std::vector<double>, n_sites>  sums;
        std::array<std::vector<int64_t>, n_sites> counts;
    };

    bool on_node(ggml_tensor * t, bool ask);
    void probe_node(const ggml_tensor * t);
    int site_of(const ggml_tensor * t, const NodeName & nn) const;
    bool wanted(const ggml_tensor * t, Site site, int32_t il) const;
    Config & live(int32_t config);
    const Config & live(int32_t config) const;
    Accumulator & slot(int32_t index);
    bool process(ggml_tensor * t, Site site, int32_t il);
    bool fetch_rows(const ggml_tensor * t, Site site, int32_t il, const UbatchPlan & ub);
    bool process_experts(ggml_tensor * t, int32_t il);
    // Whether the steered target's configuration edits layer il of it now (its gate allows it).
    bool gate_allows(const Target & tg, const Config & c, int32_t il);
    // Keeps a recorded row x [width(site)] of layer il: captured, and added to its accumulator slot.
    void record_row(Site site, int32_t il, const Target & tg, const float * x);
    void check_layer(int32_t il) const;
    // True when t's data can be edited in place (a host buffer, and not force_copy).
    bool on_host(const ggml_tensor * t) const;
    // The row of t (`rows` rows) holding tg, row_absent, or row_mismatch after fail().
    int32_t row_in(const UbatchPlan & ub, const Target & tg, const ggml_tensor * t, int64_t rows);
    void fail(const std::string & msg);

    ModelShape shape_;
    int32_t n_ubatch_  = 512;
    bool force_copy_   = false;

    // topology, from the probe
    bool probing_ = false;
    std::vector<std::string> neuron_base_;  // per layer
    std::vector<std::string> hidden_base_;  // per layer: ffn_out, or ffn_moe_out for a MoE FFN without one
    std::vector<std::string> expert_base_;  // per layer: the input of ffn_moe_down (MoE only)
    std::array<std::string, n_sites> problems_;
    std::array<std::vector<char>, n_sites> probe_seen_;
    std::array<std::vector<std::string>, n_sites> devices_;  // [site][layer]: the node's device
    std::string probe_error_;

    // steering
    std::vector<Config> configs_;
    std::vector<char> config_free_;  // per configuration: released by free_config

    // recording
    std::array<bool, n_sites> record_{};
    bool capture_ = false;
    int32_t acc_slot_ = -1;
    std::array<std::vector<float>, n_sites> captured_;
    std::vector<int32_t> captured_pos_;
    std::vector<Accumulator> slots_;

    // the decode in flight
    bool active_ = false;
    bool steer_now_ = false;
    bool record_now_ = false;
    int64_t capture_base_ = 0;
    std::vector<UbatchPlan> plans_;
    std::vector<int32_t> steer_configs_;  // per steer target slot
    std::vector<int8_t> steer_decide_;    // per steer target slot: the gate decides here
    std::vector<double> gate_scores_;     // per steer target slot: NaN until its gate scored
    std::vector<int32_t> record_slots_;   // per record target slot; empty: acc_slot_
    int32_t ubatch_ = -1;
    bool failed_ = false;
    std::string error_;
    bool copy_runs_ = true;
    CopyStats copy_stats_;
    DeviceRows device_;
};

}  // namespace sadi
