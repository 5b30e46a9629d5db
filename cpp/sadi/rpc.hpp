// llama.cpp's RPC backend (ggml-rpc), reached through the ggml that llama.cpp itself uses: the
// registry that holds the workers' devices is the one the model loader reads, and a worker run
// from here speaks exactly the protocol of this build. Nothing here speaks the protocol itself.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace sadi::rpc {

// The RPC protocol version this build speaks (ggml-rpc.h): {major, minor, patch}.
std::vector<int> protocol();
// True when this process's ggml has the RPC backend (llama.cpp built with GGML_RPC).
bool available();
// Puts the worker at `endpoint` (host:port) into ggml's device registry, once per endpoint, so
// that a model loaded afterwards can place layers on it. Connects to the worker (llama.cpp aborts
// the process when it cannot: check the endpoint first). Returns "" or why it could not.
std::string add_server(const std::string & endpoint);
// Every device in ggml's registry: (name, description), e.g. ("RPC0", "127.0.0.1:50052").
std::vector<std::pair<std::string, std::string>> devices();
// Serves `device` (a registry name; "" for the CPU) to RPC clients on `endpoint` until the
// process ends. Returns only on a bad argument, with the reason.
std::string serve(const std::string & endpoint, const std::string & cache_dir, std::size_t n_threads, const std::string & device);
// From now on, when llama.cpp aborts (a worker lost mid-compute, ...) the process prints its
// message, which of `endpoints` no longer accept a connection, and `note`, then exits with code
// 1 instead of dumping core.
void on_abort(const std::vector<std::string> & endpoints, const std::string & note);

}  // namespace sadi::rpc
