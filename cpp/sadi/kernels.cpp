#include "sadi/kernels.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace sadi {

std::vector<Range> unit_ranges(const std::vector<int32_t> & units, const std::vector<float> & deltas, int64_t unit_width,
                               int64_t n_units) {
    if (deltas.size() != units.size()) {
        throw std::invalid_argument("one delta per unit is needed (" + std::to_string(units.size()) + " units, " +
                                    std::to_string(deltas.size()) + " deltas)");
    }
    std::vector<size_t> order(units.size());
    for (size_t i = 0; i < order.size(); ++i) {
        order[i] = i;
    }
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return units[a] < units[b]; });
    std::vector<Range> ranges;
    for (size_t k = 0; k < order.size(); ++k) {
        const int32_t u = units[order[k]];
        const float d   = deltas[order[k]];
        if (u < 0 || u >= n_units) {
            throw std::invalid_argument("unit " + std::to_string(u) + " is outside [0, " + std::to_string(n_units) + ")");
        }
        if (k > 0 && u == units[order[k - 1]]) {
            throw std::invalid_argument("unit " + std::to_string(u) + " is listed twice");
        }
        if (d == 0.0f) {
            continue;
        }
        const int64_t begin = int64_t(u) * unit_width;
        if (!ranges.empty() && ranges.back().begin + ranges.back().len == begin && ranges.back().delta == d) {
            ranges.back().len += unit_width;
        } else {
            ranges.push_back(Range{begin, unit_width, d});
        }
    }
    return ranges;
}

void scale_ranges(float * row, const std::vector<Range> & ranges) {
    for (const Range & r : ranges) {
        float * x = row + r.begin;
        for (int64_t i = 0; i < r.len; ++i) {
            x[i] = x[i] + r.delta * x[i];
        }
    }
}

void add_row(float * row, const float * add, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        row[i] += add[i];
    }
}

double gate_score(const float * row, const float * direction, const float * center, int64_t n) {
    double dot = 0.0, xx = 0.0, dd = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        const double x = double(row[i]) - double(center[i]), d = double(direction[i]);
        dot += x * d;
        xx += x * x;
        dd += d * d;
    }
    return xx > 0.0 && dd > 0.0 ? dot / std::sqrt(xx * dd) : 0.0;
}

void accumulate_row(double * sum, const float * row, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        sum[i] += double(row[i]);
    }
}

}  // namespace sadi
