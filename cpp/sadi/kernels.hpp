// The arithmetic of SADI on one row of activations.
#pragma once

#include <cstdint>
#include <vector>

namespace sadi {

// A run of consecutive values in a row, scaled by one factor (1 + delta).
struct Range {
    int64_t begin = 0;
    int64_t len   = 0;
    float delta   = 0.0f;
};

// The value ranges covered by `units` (each unit_width values wide), unit units[i] with strength
// deltas[i]; adjacent units of equal strength merged, units of strength 0 left out (they change
// nothing, and an empty list then tells the callback at once that nothing is to do). Units are
// sorted first; std::invalid_argument
// for a unit outside [0, n_units), a repeat, or a count of deltas other than the units'.
std::vector<Range> unit_ranges(const std::vector<int32_t> & units, const std::vector<float> & deltas, int64_t unit_width,
                               int64_t n_units);

// SADI's edit a' = a + delta * a on the values of each range, with the range's delta; all other
// values are untouched.
void scale_ranges(float * row, const std::vector<Range> & ranges);

// A fixed vector added to a row: row[i] += add[i] (baselines: fixed vectors, CAA).
void add_row(float * row, const float * add, int64_t n);

// A gate's score: the cosine between (row - center) and direction, in double; 0 when row == center
// or the direction is zero (no angle to measure).
double gate_score(const float * row, const float * direction, const float * center, int64_t n);

// sum[i] += row[i], in double so that long runs do not lose small differences.
void accumulate_row(double * sum, const float * row, int64_t n);

}  // namespace sadi
