// pyllmops._cuda: CUDA kernels behind pybind11. Torch-free: tensors arrive as device pointers
// (validated in Python: dtype, contiguity, device) and the stream as the integer handle of
// torch.cuda.current_stream(). Each feature binds itself in cuda_<feature>.cpp.
#include <pybind11/pybind11.h>
#include <cuda_runtime.h>

namespace py = pybind11;

void bind_cuda_quant(py::module_& m);
void bind_cuda_sampling(py::module_& m);
void bind_cuda_weight_only(py::module_& m);
void bind_cuda_w8a8(py::module_& m);

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pyllmops CUDA kernels (torch-free)";
  m.def("runtime_version", [] {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  });
  bind_cuda_quant(m);
  bind_cuda_sampling(m);
  bind_cuda_weight_only(m);
  bind_cuda_w8a8(m);
}
