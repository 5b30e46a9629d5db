#include "sadi/kernels.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace sadi {

std::vector<Range> unit_ranges(std::vector<int32_t> units, int64_t unit_width, int64_t n_units) {
    std::sort(units.begin(), units.end());
    std::vector<Range> ranges;
    for (size_t i = 0; i < units.size(); ++i) {
        const int32_t u = units[i];
        if (u < 0 || u >= n_units) {
            throw std::invalid_argument("unit " + std::to_string(u) + " is outside [0, " + std::to_string(n_units) + ")");
        }
        if (i > 0 && u == units[i - 1]) {
            throw std::invalid_argument("unit " + std::to_string(u) + " is listed twice");
        }
        const int64_t begin = int64_t(u) * unit_width;
        if (!ranges.empty() && ranges.back().begin + ranges.back().len == begin) {
            ranges.back().len += unit_width;
        } else {
            ranges.push_back(Range{begin, unit_width});
        }
    }
    return ranges;
}

void scale_ranges(float * row, const std::vector<Range> & ranges, float delta) {
    for (const Range & r : ranges) {
        float * x = row + r.begin;
        for (int64_t i = 0; i < r.len; ++i) {
            x[i] = x[i] + delta * x[i];
        }
    }
}

void add_row(float * row, const float * add, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        row[i] += add[i];
    }
}

void accumulate_row(double * sum, const float * row, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        sum[i] += double(row[i]);
    }
}

}  // namespace sadi
