#include "sadi/row_map.hpp"

#include <stdexcept>
#include <string>

namespace sadi {

namespace {

void check_rows(const std::vector<int32_t> & rows, int32_t n_tokens, const char * what) {
    for (size_t i = 0; i < rows.size(); ++i) {
        if (rows[i] < 0 || rows[i] >= n_tokens || (i > 0 && rows[i] <= rows[i - 1])) {
            throw std::invalid_argument(std::string(what) + " rows must be sorted, unique and in [0, " +
                                        std::to_string(n_tokens) + "); got row " + std::to_string(rows[i]));
        }
    }
}

// Appends the targets of `rows` that fall in [begin, begin + ub.n_tokens) to `out`.
void add_targets(const std::vector<int32_t> & rows, int32_t begin, const std::vector<int32_t> & out_index,
                 const UbatchPlan & ub, std::vector<Target> & out) {
    for (size_t slot = 0; slot < rows.size(); ++slot) {
        const int32_t r = rows[slot] - begin;
        if (r >= 0 && r < ub.n_tokens) {
            out.push_back(Target{r, out_index[size_t(rows[slot])], int32_t(slot)});
        }
    }
}

}  // namespace

std::vector<UbatchPlan> plan_ubatches(int32_t n_tokens, int32_t n_ubatch, const int8_t * output,
                                      const std::vector<int32_t> & steer_rows,
                                      const std::vector<int32_t> & record_rows) {
    if (n_tokens <= 0 || n_ubatch <= 0) {
        throw std::invalid_argument("a decode needs n_tokens > 0 and n_ubatch > 0");
    }
    check_rows(steer_rows, n_tokens, "steer");
    check_rows(record_rows, n_tokens, "record");

    std::vector<UbatchPlan> plans;
    std::vector<int32_t> out_index(size_t(n_tokens), -1);  // per batch row, its rank among its ubatch's outputs
    for (int32_t begin = 0; begin < n_tokens; begin += n_ubatch) {
        UbatchPlan ub;
        ub.n_tokens = std::min(n_ubatch, n_tokens - begin);
        for (int32_t r = begin; r < begin + ub.n_tokens; ++r) {
            const bool is_out = output != nullptr ? output[r] != 0 : r == n_tokens - 1;
            if (is_out) {
                out_index[size_t(r)] = ub.n_outputs++;
            }
        }
        add_targets(steer_rows, begin, out_index, ub, ub.steer);
        add_targets(record_rows, begin, out_index, ub, ub.record);
        plans.push_back(std::move(ub));
    }
    return plans;
}

int32_t tensor_row(const UbatchPlan & ub, const Target & target, int64_t ne1) {
    if (ne1 == ub.n_tokens) {
        return target.row;
    }
    if (ne1 == ub.n_outputs) {
        return target.out_row;  // row_absent when the target is no output
    }
    return row_mismatch;
}

}  // namespace sadi
