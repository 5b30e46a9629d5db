#pragma once

#include <pybind11/pybind11.h>

namespace sadi::python {

void register_rpc(pybind11::module_ & m);

}  // namespace sadi::python
