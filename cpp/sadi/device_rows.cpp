#include "sadi/device_rows.hpp"

#include <ggml-backend.h>
#include <ggml.h>

namespace sadi {

void DeviceRows::fetch(const ggml_tensor * t, const std::vector<int32_t> & rows, int64_t width, bool runs, CopyStats & stats) {
    runs_.clear();
    stride_     = size_t(t->nb[1]) / sizeof(float);
    row_floats_ = size_t(width);
    size_t total = 0;
    for (int32_t r : rows) {
        if (runs && !runs_.empty() && r - runs_.back().last <= kMaxGap + 1) {
            runs_.back().last = r;
        } else {
            runs_.push_back(Run{r, r, 0, false});
        }
    }
    for (Run & run : runs_) {
        run.at = total;
        total += size_t(run.last - run.first) * stride_ + row_floats_;
    }
    data_.resize(total);
    for (const Run & run : runs_) {
        const size_t bytes = (size_t(run.last - run.first) * stride_ + row_floats_) * sizeof(float);
        ggml_backend_tensor_get(const_cast<ggml_tensor *>(t), data_.data() + run.at, size_t(run.first) * size_t(t->nb[1]), bytes);
        stats.gets += 1;
        stats.bytes += bytes;
    }
}

DeviceRows::Run * DeviceRows::run_of(int32_t r) {
    for (Run & run : runs_) {
        if (run.first <= r && r <= run.last) {
            return &run;
        }
    }
    return nullptr;
}

float * DeviceRows::row(int32_t r) {
    Run * run = run_of(r);
    return run == nullptr ? nullptr : data_.data() + run->at + size_t(r - run->first) * stride_;
}

void DeviceRows::mark_edited(int32_t r) {
    if (Run * run = run_of(r)) {
        run->edited = true;
    }
}

void DeviceRows::write_back(ggml_tensor * t, CopyStats & stats) {
    for (Run & run : runs_) {
        if (!run.edited) {
            continue;
        }
        // the run goes back whole: the rows between edited ones are the values just read
        const size_t bytes = (size_t(run.last - run.first) * stride_ + row_floats_) * sizeof(float);
        ggml_backend_tensor_set(t, data_.data() + run.at, size_t(run.first) * size_t(t->nb[1]), bytes);
        stats.sets += 1;
        stats.bytes += bytes;
        run.edited = false;
    }
}

}  // namespace sadi
