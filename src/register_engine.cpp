// Binds sadi::Engine: conversions between Python ints/numpy arrays and the C++ types, nothing more.
#include "register_engine.hpp"

#include "sadi/engine.hpp"

#include <llama.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>

namespace py = pybind11;

namespace sadi::python {

namespace {

Site to_site(const std::string & name) {
    if (name == "head") return Site::head;
    if (name == "neuron") return Site::neuron;
    if (name == "hidden") return Site::hidden;
    if (name == "residual") return Site::residual;
    if (name == "expert") return Site::expert;
    throw py::value_error("unknown site '" + name + "': use head, neuron, hidden, expert or residual");
}

template <typename T>
py::array_t<T> to_array(const std::vector<T> & v, std::vector<py::ssize_t> shape) {
    py::array_t<T> out(shape);
    std::copy(v.begin(), v.end(), out.mutable_data());
    return out;
}

}  // namespace

void register_engine(py::module_ & m) {
    py::class_<Engine>(m, "Engine")
        .def(py::init([](std::uintptr_t model) {
                 return new Engine(shape_from_model(reinterpret_cast<const llama_model *>(model)));
             }),
             py::arg("model_address"))
        .def_property_readonly_static("callback_address",
                                      [](py::object) { return reinterpret_cast<std::uintptr_t>(&Engine::eval_callback); })
        .def_property_readonly("address", [](Engine & e) { return reinterpret_cast<std::uintptr_t>(&e); })
        .def_property_readonly("shape",
                               [](const Engine & e) {
                                   const ModelShape & s = e.shape();
                                   py::dict d;
                                   d["arch"]     = s.arch;
                                   d["n_layer"]  = s.n_layer;
                                   d["n_head"]   = s.n_head;
                                   d["head_dim"] = s.head_dim;
                                   d["n_ff"]     = s.n_ff;
                                   d["n_embd"]   = s.n_embd;
                                   d["n_expert"] = s.n_expert;
                                   d["n_ff_exp"] = s.n_ff_exp;
                                   return d;
                               })
        .def("set_n_ubatch", &Engine::set_n_ubatch)
        .def_property("force_copy", &Engine::force_copy, &Engine::set_force_copy)
        .def_property("copy_runs", &Engine::copy_runs, &Engine::set_copy_runs)
        .def("copy_stats",
             [](const Engine & e) {
                 py::dict d;
                 d["gets"]  = e.copy_stats().gets;
                 d["sets"]  = e.copy_stats().sets;
                 d["bytes"] = e.copy_stats().bytes;
                 return d;
             })
        .def("site_device", [](const Engine & e, const std::string & site, int32_t il) { return e.site_device(to_site(site), il); },
             py::arg("site"), py::arg("layer"))
        .def("begin_probe", &Engine::begin_probe)
        .def("end_probe", &Engine::end_probe)
        .def("site_problem", [](const Engine & e, const std::string & site) { return e.site_problem(to_site(site)); })
        .def("site_node", [](const Engine & e, const std::string & site, int32_t il) { return e.site_node(to_site(site), il); },
             py::arg("site"), py::arg("layer"))
        .def("new_config", &Engine::new_config)
        .def("free_config", &Engine::free_config, py::arg("config"))
        .def_property_readonly("n_configs", &Engine::n_configs)
        .def("set_mask",
             [](Engine & e, int32_t config, const std::string & site, int32_t il, const std::vector<int32_t> & units,
                const std::vector<float> & deltas) { e.set_mask(config, to_site(site), il, units, deltas); },
             py::arg("config"), py::arg("site"), py::arg("layer"), py::arg("units"), py::arg("deltas"))
        .def("clear_mask", &Engine::clear_mask, py::arg("config"))
        .def("set_add",
             [](Engine & e, int32_t config, const std::string & site, int32_t il,
                const py::array_t<float, py::array::c_style | py::array::forcecast> & values) {
                 if (values.ndim() != 1) {
                     throw py::value_error("the vector to add must be one-dimensional");
                 }
                 e.set_add(config, to_site(site), il, std::vector<float>(values.data(), values.data() + values.size()));
             },
             py::arg("config"), py::arg("site"), py::arg("layer"), py::arg("values"))
        .def("clear_adds", &Engine::clear_adds, py::arg("config"))
        .def("set_gate", &Engine::set_gate, py::arg("config"), py::arg("layer"), py::arg("direction"), py::arg("center"),
             py::arg("threshold"))
        .def("clear_gate", &Engine::clear_gate, py::arg("config"))
        .def("gate_layer", &Engine::gate_layer, py::arg("config"))
        .def("steering", &Engine::steering, py::arg("config"))
        .def("set_record", [](Engine & e, const std::string & site, bool on) { e.set_record(to_site(site), on); })
        .def("set_capture", &Engine::set_capture)
        .def("set_accumulate_slot", &Engine::set_accumulate_slot)
        .def("clear_records", &Engine::clear_records)
        .def_property_readonly("n_captured", &Engine::n_captured)
        .def("captured",
             [](const Engine & e, const std::string & site) {
                 const Site s = to_site(site);
                 const std::vector<float> & v = e.captured(s);
                 const py::ssize_t n_layer = e.shape().n_layer, width = e.shape().width(s);
                 return to_array(v, {py::ssize_t(v.size()) / (n_layer * width), n_layer, width});
             })
        .def("captured_positions",
             [](const Engine & e) { return to_array(e.captured_pos(), {py::ssize_t(e.captured_pos().size())}); })
        .def_property_readonly("n_slots", &Engine::n_slots)
        .def("sums",
             [](const Engine & e, int32_t slot, const std::string & site) {
                 const Site s = to_site(site);
                 return to_array(e.sums(slot, s), {e.shape().n_layer, py::ssize_t(e.shape().width(s))});
             })
        .def("counts",
             [](const Engine & e, int32_t slot, const std::string & site) {
                 return to_array(e.counts(slot, to_site(site)), {e.shape().n_layer});
             })
        .def(
            "begin_decode",
            [](Engine & e, std::uintptr_t batch, const std::vector<int32_t> & steer_rows,
               const std::vector<int32_t> & record_rows, const std::vector<int32_t> & steer_configs,
               const std::vector<int32_t> & record_slots, const std::vector<int8_t> & steer_decide) {
                if (batch == 0) {
                    throw py::value_error("null llama_batch address");
                }
                e.begin_decode(*reinterpret_cast<const llama_batch *>(batch), steer_rows, record_rows, steer_configs,
                               record_slots, steer_decide);
            },
            py::arg("batch_address"), py::arg("steer_rows"), py::arg("record_rows"),
            py::arg("steer_configs") = std::vector<int32_t>(), py::arg("record_slots") = std::vector<int32_t>(),
            py::arg("steer_decide") = std::vector<int8_t>())
        .def("end_decode", &Engine::end_decode)
        .def("gate_scores", [](const Engine & e) { return to_array(e.gate_scores(), {py::ssize_t(e.gate_scores().size())}); });
}

}  // namespace sadi::python
