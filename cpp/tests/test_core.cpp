// Tests of the core's pure parts (no model, no Python): node names, row mapping, the kernel.
#include "sadi/kernels.hpp"
#include "sadi/node_name.hpp"
#include "sadi/row_map.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

int g_failed = 0;
int g_checks = 0;

void check(bool ok, const char * what, int line) {
    ++g_checks;
    if (!ok) {
        ++g_failed;
        std::fprintf(stderr, "FAIL line %d: %s\n", line, what);
    }
}
#define CHECK(x) check((x), #x, __LINE__)

template <typename E>
bool throws(const std::function<void()> & f) {
    try {
        f();
    } catch (const E &) {
        return true;
    }
    return false;
}

void test_node_names() {
    sadi::NodeName nn;
    CHECK(sadi::parse_node_name("kqv_out-12", nn) && nn.base == "kqv_out" && nn.il == 12);
    CHECK(sadi::parse_node_name("ffn_geglu-0", nn) && nn.base == "ffn_geglu" && nn.il == 0);
    CHECK(sadi::parse_node_name("a-b-3", nn) && nn.base == "a-b" && nn.il == 3);
    CHECK(!sadi::parse_node_name("result_output", nn));
    CHECK(!sadi::parse_node_name("kqv_out-", nn));
    CHECK(!sadi::parse_node_name("-3", nn));
    CHECK(!sadi::parse_node_name("kqv_out-3 (view)", nn));
    CHECK(!sadi::parse_node_name("kqv_out-x", nn));
}

void test_row_map() {
    // 10 rows in ubatches of 4: [0,4) [4,8) [8,10); outputs at rows 3, 5 and 9.
    const int8_t out[10] = {0, 0, 0, 1, 0, 1, 0, 0, 0, 1};
    const auto plans = sadi::plan_ubatches(10, 4, out, {3, 4, 9}, {0, 5});
    CHECK(plans.size() == 3);
    CHECK(plans[0].n_tokens == 4 && plans[1].n_tokens == 4 && plans[2].n_tokens == 2);
    CHECK(plans[0].n_outputs == 1 && plans[1].n_outputs == 1 && plans[2].n_outputs == 1);
    CHECK(plans[0].steer.size() == 1 && plans[0].steer[0].row == 3 && plans[0].steer[0].out_row == 0);
    CHECK(plans[1].steer.size() == 1 && plans[1].steer[0].row == 0 && plans[1].steer[0].out_row == -1);
    CHECK(plans[2].steer.size() == 1 && plans[2].steer[0].row == 1 && plans[2].steer[0].out_row == 0);
    CHECK(plans[0].record.size() == 1 && plans[0].record[0].slot == 0);
    CHECK(plans[1].record.size() == 1 && plans[1].record[0].row == 1 && plans[1].record[0].slot == 1 &&
          plans[1].record[0].out_row == 0);
    CHECK(plans[2].record.empty());

    // A full-row tensor uses the row, an output-row tensor (last layer) the output rank.
    CHECK(sadi::tensor_row(plans[2], plans[2].steer[0], 2) == 1);
    CHECK(sadi::tensor_row(plans[2], plans[2].steer[0], 1) == 0);
    CHECK(sadi::tensor_row(plans[1], plans[1].steer[0], 1) == sadi::row_absent);
    CHECK(sadi::tensor_row(plans[1], plans[1].steer[0], 3) == sadi::row_mismatch);

    // No logits array: llama.cpp outputs the last row only.
    const auto last = sadi::plan_ubatches(5, 8, nullptr, {4}, {});
    CHECK(last.size() == 1 && last[0].n_outputs == 1 && last[0].steer[0].out_row == 0);

    CHECK(throws<std::invalid_argument>([] { sadi::plan_ubatches(4, 2, nullptr, {2, 1}, {}); }));
    CHECK(throws<std::invalid_argument>([] { sadi::plan_ubatches(4, 2, nullptr, {}, {4}); }));
    CHECK(throws<std::invalid_argument>([] { sadi::plan_ubatches(4, 0, nullptr, {}, {}); }));
}

void test_kernel() {
    const float d = 2.7f;
    const auto ranges = sadi::unit_ranges({3, 1, 0}, {d, d, d}, 2, 4);  // heads 0,1 merge; head 3 apart
    CHECK(ranges.size() == 2);
    CHECK(ranges[0].begin == 0 && ranges[0].len == 4 && ranges[1].begin == 6 && ranges[1].len == 2);
    CHECK(ranges[0].delta == d && ranges[1].delta == d);
    CHECK(throws<std::invalid_argument>([] { sadi::unit_ranges({4}, {1.0f}, 2, 4); }));
    CHECK(throws<std::invalid_argument>([] { sadi::unit_ranges({1, 1}, {1.0f, 1.0f}, 2, 4); }));
    CHECK(throws<std::invalid_argument>([] { sadi::unit_ranges({1, 2}, {1.0f}, 2, 4); }));
    CHECK(sadi::unit_ranges({}, {}, 2, 4).empty());

    std::vector<float> row = {1.5f, -2.0f, 0.1f, 3.0f, 7.0f, -0.3f, 1e-3f, -4.25f};
    const std::vector<float> before = row;
    sadi::scale_ranges(row.data(), ranges);
    for (size_t i = 0; i < row.size(); ++i) {
        const bool masked = i < 4 || i >= 6;
        const float want = masked ? before[i] + d * before[i] : before[i];
        CHECK(std::memcmp(&row[i], &want, sizeof(float)) == 0);  // bit-identical, masked or not
    }
    CHECK(sadi::unit_ranges({3, 1, 0}, {0.0f, 0.0f, 0.0f}, 2, 4).empty());  // strength 0 changes nothing: left out
    std::vector<float> zero = before;
    sadi::scale_ranges(zero.data(), sadi::unit_ranges({3, 1, 0}, {0.0f, 0.0f, 0.0f}, 2, 4));
    CHECK(std::memcmp(zero.data(), before.data(), before.size() * sizeof(float)) == 0);

    // a strength per unit: units of other strengths stay apart, each scaled by its own
    const auto mixed = sadi::unit_ranges({0, 1, 2}, {1.0f, -0.5f, -0.5f}, 2, 4);
    CHECK(mixed.size() == 2 && mixed[0].len == 2 && mixed[1].begin == 2 && mixed[1].len == 4);
    std::vector<float> row2 = before;
    sadi::scale_ranges(row2.data(), mixed);
    for (size_t i = 0; i < row2.size(); ++i) {
        const float delta = i < 2 ? 1.0f : i < 6 ? -0.5f : 0.0f;
        const float want = i < 6 ? before[i] + delta * before[i] : before[i];
        CHECK(std::memcmp(&row2[i], &want, sizeof(float)) == 0);
    }

    std::vector<double> sum(3, 1.0);
    const float add[3] = {0.5f, -1.0f, 2.0f};
    sadi::accumulate_row(sum.data(), add, 3);
    CHECK(sum[0] == 1.5 && sum[1] == 0.0 && sum[2] == 3.0);

    // gate score: cos(row - center, direction); (3,4)-(0,0) against (1,0) is 3/5, scale-free in the direction
    const float grow[2] = {3.0f, 5.0f}, gcenter[2] = {0.0f, 1.0f}, gdir[2] = {2.0f, 0.0f}, gzero[2] = {0.0f, 0.0f};
    CHECK(std::fabs(sadi::gate_score(grow, gdir, gcenter, 2) - 0.6) < 1e-12);
    CHECK(sadi::gate_score(gcenter, gdir, gcenter, 2) == 0.0);  // the row at the center: no angle
    CHECK(sadi::gate_score(grow, gzero, gcenter, 2) == 0.0);

    std::vector<float> shifted = {1.0f, 2.0f, -3.0f};
    sadi::add_row(shifted.data(), add, 3);
    CHECK(shifted[0] == 1.5f && shifted[1] == 1.0f && shifted[2] == -1.0f);
}

}  // namespace

int main() {
    test_node_names();
    test_row_map();
    test_kernel();
    std::printf("%d checks, %d failed\n", g_checks, g_failed);
    return g_failed == 0 ? 0 : 1;
}
