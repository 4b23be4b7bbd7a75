// Build facts the Python side reports (pyllmops.build_info()).
#include <pybind11/pybind11.h>
#include <thread>

#include "cpu/parallel.h"

namespace py = pybind11;

void bind_info(py::module_& m) {
  m.def("hardware_threads", [] { return pyllmops::cpu::default_threads(); },
        "Threads the C++ core may use (std::thread::hardware_concurrency).");
#if defined(__AVX512F__)
  m.attr("avx512") = true;
#else
  m.attr("avx512") = false;
#endif
}
