#include "sadi/rpc.hpp"

#include <ggml-backend.h>
#include <ggml-rpc.h>
#include <ggml.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <set>

namespace sadi::rpc {

namespace {

using add_server_fn   = ggml_backend_reg_t (*)(const char *);
using start_server_fn = void (*)(const char *, const char *, size_t, size_t, ggml_backend_dev_t *);

void * proc(const char * name) {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("RPC");
    return reg == nullptr ? nullptr : ggml_backend_reg_get_proc_address(reg, name);
}

std::mutex g_mutex;
std::set<std::string> g_added;
std::vector<std::string> g_endpoints;  // for the abort message
std::string g_note;

// True when a TCP connection to host:port opens within a second.
bool answers(const std::string & endpoint) {
    const size_t colon = endpoint.rfind(':');
    if (colon == std::string::npos) {
        return false;
    }
    addrinfo hints{};
    hints.ai_family   = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo * found  = nullptr;
    if (getaddrinfo(endpoint.substr(0, colon).c_str(), endpoint.substr(colon + 1).c_str(), &hints, &found) != 0) {
        return false;
    }
    bool ok = false;
    for (addrinfo * a = found; a != nullptr && !ok; a = a->ai_next) {
        const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) {
            continue;
        }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            ok = true;
        } else {
            pollfd p{fd, POLLOUT, 0};
            int err = 0;
            socklen_t len = sizeof(err);
            ok = poll(&p, 1, 1000) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
        }
        close(fd);
    }
    freeaddrinfo(found);
    return ok;
}

// A worker that just died may still hold its listening socket for a moment: it counts as gone
// when any of ten connection attempts over a second is refused (a live one, even busy with
// another client, accepts them all).
bool gone(const std::string & endpoint) {
    for (int i = 0; i < 10; ++i) {
        if (!answers(endpoint)) {
            return true;
        }
        usleep(100 * 1000);
    }
    return false;
}

void aborted(const char * message) {
    std::fprintf(stderr, "error: llama.cpp stopped the process: %s\n", message);
    for (const std::string & e : g_endpoints) {
        if (gone(e)) {
            std::fprintf(stderr, "error: the RPC worker %s no longer accepts connections (stopped, or its machine is gone)\n", e.c_str());
        }
    }
    if (!g_note.empty()) {
        std::fprintf(stderr, "%s\n", g_note.c_str());
    }
    std::fflush(stderr);
    std::_Exit(1);
}

}  // namespace

std::vector<int> protocol() {
    return {RPC_PROTO_MAJOR_VERSION, RPC_PROTO_MINOR_VERSION, RPC_PROTO_PATCH_VERSION};
}

bool available() {
    return proc("ggml_backend_rpc_add_server") != nullptr;
}

std::string add_server(const std::string & endpoint) {
    auto add = reinterpret_cast<add_server_fn>(proc("ggml_backend_rpc_add_server"));
    if (add == nullptr) {
        return "this llama.cpp has no RPC backend";
    }
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_added.count(endpoint) != 0) {
        return "";
    }
    ggml_backend_reg_t reg = add(endpoint.c_str());
    if (reg == nullptr) {
        return "the worker at " + endpoint + " offers no device";
    }
    ggml_backend_register(reg);
    g_added.insert(endpoint);
    return "";
}

std::vector<std::pair<std::string, std::string>> devices() {
    std::vector<std::pair<std::string, std::string>> out;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        out.emplace_back(ggml_backend_dev_name(dev), ggml_backend_dev_description(dev));
    }
    return out;
}

std::string serve(const std::string & endpoint, const std::string & cache_dir, std::size_t n_threads, const std::string & device) {
    auto start = reinterpret_cast<start_server_fn>(proc("ggml_backend_rpc_start_server"));
    if (start == nullptr) {
        return "this llama.cpp has no RPC backend";
    }
    ggml_backend_dev_t dev = device.empty() ? ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
                                            : ggml_backend_dev_by_name(device.c_str());
    if (dev == nullptr) {
        return "no device named '" + device + "'";
    }
    start(endpoint.c_str(), cache_dir.empty() ? nullptr : cache_dir.c_str(), n_threads, 1, &dev);
    return "the RPC server stopped";
}

void on_abort(const std::vector<std::string> & endpoints, const std::string & note) {
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        g_endpoints = endpoints;
        g_note      = note;
    }
    ggml_set_abort_callback(aborted);
}

}  // namespace sadi::rpc
