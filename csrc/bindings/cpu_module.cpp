// pyllmops._C: the torch-free C++ core. Each feature binds itself in its own cpu_<feature>.cpp
// (void bind_<feature>(pybind11::module_&)); this file only lists them. Tensors cross this
// boundary as raw data pointers validated on the Python side (pyllmops/ops), which keeps torch
// headers, and their minutes of compile time, out of the build.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_info(py::module_& m);
void bind_sampling(py::module_& m);
void bind_bpe(py::module_& m);
void bind_weight_only(py::module_& m);
void bind_w8a8(py::module_& m);
void bind_decode(py::module_& m);
void bind_attention(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyllmops C++ core (torch-free)";
  bind_info(m);
  bind_sampling(m);
  bind_bpe(m);
  bind_weight_only(m);
  bind_w8a8(m);
  bind_decode(m);
  bind_attention(m);
}
