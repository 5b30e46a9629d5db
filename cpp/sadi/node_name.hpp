// llama.cpp names graph nodes "<name>-<layer>"; this splits such a name.
#pragma once

#include <string_view>

namespace sadi {

struct NodeName {
    std::string_view base;
    int il = -1;
};

// True when `name` is "<base>-<layer>" with a non-empty base and a decimal layer.
bool parse_node_name(const char * name, NodeName & out);

}  // namespace sadi
