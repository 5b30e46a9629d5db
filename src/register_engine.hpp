#pragma once

#include <pybind11/pybind11.h>

namespace sadi::python {

void register_engine(pybind11::module_ & m);

}  // namespace sadi::python
