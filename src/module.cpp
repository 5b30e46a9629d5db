// The extension module sadi_cpp._core: registration only.
#include <pybind11/pybind11.h>

#include "register_engine.hpp"
#include "register_rpc.hpp"

PYBIND11_MODULE(_core, m) {
    m.doc() = "sadi-cpp's C++ steering engine (internal; use the sadi_cpp package)";
    sadi::python::register_engine(m);
    sadi::python::register_rpc(m);
}
