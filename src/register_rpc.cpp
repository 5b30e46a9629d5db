// Binds sadi::rpc (llama.cpp's RPC backend through this process's ggml): conversions only.
#include "register_rpc.hpp"

#include "sadi/rpc.hpp"

#include <pybind11/stl.h>

namespace py = pybind11;

namespace sadi::python {

void register_rpc(py::module_ & m) {
    py::module_ r = m.def_submodule("rpc", "llama.cpp's RPC backend (ggml-rpc) through the process's own ggml");
    r.def("protocol", &rpc::protocol);
    r.def("available", &rpc::available);
    r.def("add_server", &rpc::add_server, py::arg("endpoint"), py::call_guard<py::gil_scoped_release>());
    r.def("devices", &rpc::devices);
    r.def("serve", &rpc::serve, py::arg("endpoint"), py::arg("cache_dir"), py::arg("n_threads"), py::arg("device"),
          py::call_guard<py::gil_scoped_release>());
    r.def("on_abort", &rpc::on_abort, py::arg("endpoints"), py::arg("note"));
}

}  // namespace sadi::python
