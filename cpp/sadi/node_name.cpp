#include "sadi/node_name.hpp"

#include <cstring>

namespace sadi {

bool parse_node_name(const char * name, NodeName & out) {
    const char * dash = std::strrchr(name, '-');
    if (dash == nullptr || dash == name || dash[1] == '\0') {
        return false;
    }
    int il = 0;
    for (const char * p = dash + 1; *p != '\0'; ++p) {
        if (*p < '0' || *p > '9' || il > 100000000) {
            return false;
        }
        il = il * 10 + (*p - '0');
    }
    out.base = std::string_view(name, size_t(dash - name));
    out.il   = il;
    return true;
}

}  // namespace sadi
