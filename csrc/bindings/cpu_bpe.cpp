// Python face of the BPE core (pyllmops.tokenizer wraps it): str arrives as its cached UTF-8
// buffer (no copy), ids leave as list[int]; every encode runs with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <exception>
#include <string>
#include <vector>

#include "bpe/encoder.h"
#include "bpe/trainer.h"

namespace py = pybind11;
using pyllmops::bpe::Encoder;
using pyllmops::bpe::SpecialToken;
using pyllmops::bpe::Split;

namespace {

Split parse_split(const std::string& name) {
  if (name == "r50k") return Split::kR50k;
  if (name == "cl100k") return Split::kCl100k;
  if (name == "llama3") return Split::kLlama3;
  if (name == "o200k") return Split::kO200k;
  if (name == "gpt2_digits") return Split::kGpt2Digits;
  if (name == "none") return Split::kNone;
  throw py::value_error("unknown split '" + name + "' (r50k, cl100k, llama3, o200k, gpt2_digits, none)");
}

// UTF-8 view of a str (valid while the str lives). Raises UnicodeEncodeError for lone surrogates;
// the Python side replaces them first, as tiktoken does.
std::string_view utf8(py::handle h, const char* what) {
  if (!PyUnicode_Check(h.ptr()))
    throw py::type_error(std::string(what) + " must be str, not " + Py_TYPE(h.ptr())->tp_name);
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(h.ptr(), &n);
  if (!p) throw py::error_already_set();
  return {p, static_cast<size_t>(n)};
}

// Runs f() with the GIL released. Not py::gil_scoped_release: a daemon thread that retakes the GIL
// while the interpreter shuts down is ended there (pthread_exit, a forced unwind), and an unwind
// out of that guard's destructor (noexcept) calls std::terminate: the exiting process aborted.
template <class F>
void without_gil(F&& f) {
  std::exception_ptr error;
  PyThreadState* ts = PyEval_SaveThread();
  try {
    f();
  } catch (...) {
    error = std::current_exception();
  }
  PyEval_RestoreThread(ts);
  if (error) std::rethrow_exception(error);
}

const uint8_t* u8(std::string_view s) { return reinterpret_cast<const uint8_t*>(s.data()); }

// The core encoder plus one Python int per id, made once: a list of ids is then built with
// reference-count increments instead of one int allocation per token (a third of the time of
// encoding 1 MB otherwise).
struct PyEncoder {
  std::shared_ptr<const Encoder> core;
  std::vector<py::object> ints;

  explicit PyEncoder(std::shared_ptr<const Encoder> c) : core(std::move(c)) {
    ints.reserve(core->n_vocab());
    for (uint32_t i = 0; i < core->n_vocab(); ++i) ints.push_back(py::int_(i));
  }

  py::list to_list(const std::vector<uint32_t>& v) const {
    PyObject* l = PyList_New(static_cast<Py_ssize_t>(v.size()));
    if (!l) throw py::error_already_set();
    for (size_t i = 0; i < v.size(); ++i) {
      PyObject* o = ints[v[i]].ptr();
      Py_INCREF(o);
      PyList_SET_ITEM(l, static_cast<Py_ssize_t>(i), o);
    }
    return py::reinterpret_steal<py::list>(l);
  }
};

// Indices into the encoder's specials -> per-special flags.
std::vector<char> flags(const Encoder& e, const std::vector<size_t>& which) {
  std::vector<char> f(e.specials().size(), 0);
  for (size_t k : which) {
    if (k >= f.size()) throw py::index_error("special token index out of range");
    f[k] = 1;
  }
  return f;
}

std::vector<SpecialToken> to_specials(const std::vector<std::pair<py::bytes, uint32_t>>& sp) {
  std::vector<SpecialToken> out;
  for (const auto& [b, id] : sp) out.push_back(SpecialToken{std::string(b), id});
  return out;
}

std::vector<uint32_t> to_ids(py::handle seq, const Encoder& e) {
  py::sequence s = py::reinterpret_borrow<py::sequence>(seq);
  std::vector<uint32_t> ids(static_cast<size_t>(py::len(s)));
  for (size_t i = 0; i < ids.size(); ++i) {
    py::object o = s[i];
    if (!PyLong_Check(o.ptr()) && !PyIndex_Check(o.ptr()))
      throw py::type_error(std::string("token ids must be int, not ") + Py_TYPE(o.ptr())->tp_name);
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(py::reinterpret_steal<py::object>(PyNumber_Index(o.ptr())).ptr(), &overflow);
    if (overflow || v < 0 || v > 0xFFFFFFFFll) {  // OverflowError, as tiktoken's u32 conversion
      PyErr_SetString(PyExc_OverflowError, ("token id " + std::string(py::str(o)) + " at position " +
                                            std::to_string(i) + " is outside 0..2**32-1").c_str());
      throw py::error_already_set();
    }
    if (!e.valid(static_cast<uint32_t>(v)))
      throw py::key_error("invalid token id " + std::string(py::str(o)) + " at position " + std::to_string(i) +
                          " (vocabulary has ids 0.." + std::to_string(e.n_vocab() - 1) + ")");
    ids[i] = static_cast<uint32_t>(v);
  }
  return ids;
}

}  // namespace

void bind_bpe(py::module_& m) {
  py::class_<PyEncoder>(m, "BpeEncoder",
                                                 "Immutable byte-level BPE encoder (pyllmops.tokenizer.Encoding wraps it).")
      .def_static(
          "from_ranks",
          [](const std::vector<py::bytes>& tokens, const std::vector<uint32_t>& ranks, const std::string& split,
             const std::vector<std::pair<py::bytes, uint32_t>>& specials) {
            std::vector<std::string> t(tokens.begin(), tokens.end());
            auto sp = to_specials(specials);
            const Split s = parse_split(split);
            std::shared_ptr<const Encoder> core;
            without_gil([&] { core = Encoder::from_ranks(t, ranks, s, std::move(sp)); });
            return PyEncoder(std::move(core));
          },
          py::arg("tokens"), py::arg("ranks"), py::arg("split"), py::arg("specials"))
      .def_static(
          "from_merges",
          [](const std::vector<py::object>& tokens, const std::vector<std::pair<uint32_t, uint32_t>>& merges,
             const std::string& split, const std::vector<std::pair<py::bytes, uint32_t>>& specials, bool ignore_merges) {
            std::vector<std::string> t(tokens.size());
            std::vector<bool> has(tokens.size(), false);
            for (size_t i = 0; i < tokens.size(); ++i) {
              if (tokens[i].is_none()) continue;
              t[i] = tokens[i].cast<std::string>();
              has[i] = true;
            }
            auto sp = to_specials(specials);
            const Split s = parse_split(split);
            std::shared_ptr<const Encoder> core;
            without_gil([&] { core = Encoder::from_merges(t, has, merges, s, std::move(sp), ignore_merges); });
            return PyEncoder(std::move(core));
          },
          py::arg("tokens"), py::arg("merges"), py::arg("split"), py::arg("specials"), py::arg("ignore_merges"))
      .def(
          "encode_ordinary",
          [](const PyEncoder& pe, py::handle text) {
            const Encoder& e = *pe.core;
            const std::string_view s = utf8(text, "text");
            std::vector<uint32_t> out;
            without_gil([&] {
              out.reserve(s.size() / 4 + 8);
              e.encode_ordinary(u8(s), s.size(), out);
            });
            return pe.to_list(out);
          },
          py::arg("text"))
      .def(
          "encode_concat",
          [](const PyEncoder& pe, const py::list& texts) {
            const Encoder& e = *pe.core;
            std::vector<std::string_view> views;
            views.reserve(texts.size());
            for (py::handle t : texts) views.push_back(utf8(t, "each text"));
            std::vector<uint32_t> out;
            without_gil([&] {
              for (const std::string_view s : views) e.encode_ordinary(u8(s), s.size(), out);
            });
            return pe.to_list(out);
          },
          py::arg("texts"),
          "encode_ordinary of each text, concatenated (with split 'none': the BPE of each piece that a "
          "Python pre-tokenizer produced, in one call).")
      .def(
          "encode_ordinary_bytes",
          [](const PyEncoder& pe, const py::bytes& data) {
            const Encoder& e = *pe.core;
            const std::string_view s = data;
            std::vector<uint32_t> out;
            without_gil([&] { e.encode_ordinary(u8(s), s.size(), out); });
            return pe.to_list(out);
          },
          py::arg("data"), "Encode raw bytes (any, even invalid UTF-8) with no special tokens.")
      .def(
          "encode",
          [](const PyEncoder& pe, py::handle text, const std::vector<size_t>& allowed) {
            const Encoder& e = *pe.core;
            const std::string_view s = utf8(text, "text");
            const std::vector<char> a = flags(e, allowed);
            std::vector<uint32_t> out;
            without_gil([&] {
              out.reserve(s.size() / 4 + 8);
              e.encode(u8(s), s.size(), a, out);
            });
            return pe.to_list(out);
          },
          py::arg("text"), py::arg("allowed"), "Encode; specials with the given indices are recognized.")
      .def(
          "find_special",
          [](const PyEncoder& pe, py::handle text, const std::vector<size_t>& which) {
            const Encoder& e = *pe.core;
            const std::string_view s = utf8(text, "text");
            const std::vector<char> w = flags(e, which);
            size_t at = 0;
            long k = -1;
            without_gil([&] { k = e.find_special(u8(s), s.size(), 0, w, &at); });
            return k;
          },
          py::arg("text"), py::arg("which"), "Index of a listed special occurring in text (leftmost), or -1.")
      .def(
          "encode_batch",
          [](const PyEncoder& pe, const py::list& texts, const std::vector<size_t>& allowed,
             const std::vector<size_t>& disallowed, int threads) {
            const Encoder& e = *pe.core;
            std::vector<std::string_view> views;
            views.reserve(texts.size());
            for (py::handle t : texts) views.push_back(utf8(t, "each text"));
            pyllmops::bpe::BatchEncode batch(e, views, flags(e, allowed), flags(e, disallowed), threads);
            // Building the lists needs the GIL and is serial (~5% of the encoding time), so this
            // thread stops encoding a little early and builds the lists of finished texts while the
            // pool threads encode the last ones: about helpers/20 of the texts are left to them.
            const size_t n = views.size();
            without_gil([&] { batch.work((static_cast<size_t>(batch.helpers()) * n + 19) / 20); });
            py::list result(n);
            size_t built = 0;
            const auto build = [&] {
              for (size_t t; batch.next_finished(&t); ++built) result[t] = pe.to_list(batch.ids(t));
            };
            build();
            if (built == n) {
              batch.finish();  // only waits for pool threads to leave the finished job
            } else {
              without_gil([&] { batch.finish(); });
            }
            build();
            std::vector<long> bad(n);
            for (size_t t = 0; t < n; ++t) bad[t] = batch.bad(t);
            return py::make_tuple(result, bad);
          },
          py::arg("texts"), py::arg("allowed"), py::arg("disallowed"), py::arg("threads"),
          "(ids per text, per text the index of a disallowed special found or -1).")
      .def(
          "decode",
          [](const PyEncoder& pe, py::handle ids) {
            const Encoder& e = *pe.core;
            const std::vector<uint32_t> v = to_ids(ids, e);
            std::string out;
            size_t bad = 0;
            without_gil([&] { e.decode(v.data(), v.size(), out, &bad); });
            return py::bytes(out);
          },
          py::arg("ids"))
      .def(
          "token_bytes",
          [](const PyEncoder& pe, long long id) {
            const Encoder& e = *pe.core;
            if (id < 0 || id > 0xFFFFFFFFll || !e.valid(static_cast<uint32_t>(id)))
              throw py::key_error("invalid token id " + std::to_string(id));
            return py::bytes(std::string(e.token_bytes(static_cast<uint32_t>(id))));
          },
          py::arg("id"))
      .def(
          "encode_piece",
          [](const PyEncoder& pe, const py::bytes& data) {
            const Encoder& e = *pe.core;
            const std::string_view s = data;
            std::vector<uint32_t> out;
            without_gil([&] { e.encode_single_piece(u8(s), s.size(), out); });
            return pe.to_list(out);
          },
          py::arg("data"), "BPE of one piece (no pre-tokenization): what merging alone gives.")
      .def_property_readonly("n_vocab", [](const PyEncoder& pe) { return pe.core->n_vocab(); })
      .def_property_readonly("ids", [](const PyEncoder& pe) {
        const Encoder& e = *pe.core;
        std::vector<uint32_t> v;
        for (uint32_t i = 0; i < e.n_vocab(); ++i)
          if (e.valid(i)) v.push_back(i);
        return v;
      });

  m.def(
      "bpe_split",
      [](const py::bytes& data, const std::string& split) {
        const std::string_view s = data;
        py::list out;
        pyllmops::bpe::for_each_piece(parse_split(split), u8(s), s.size(), [&](size_t b, size_t e) {
          out.append(py::bytes(s.data() + b, e - b));
        });
        return out;
      },
      py::arg("data"), py::arg("split"), "The pre-tokenizer's pieces of UTF-8 data.");

  m.def(
      "bpe_parse_tiktoken",
      [](const py::bytes& data) {
        const std::string_view s = data;
        std::vector<std::string> tokens;
        std::vector<uint32_t> ranks;
        without_gil([&] { pyllmops::bpe::parse_tiktoken(s, tokens, ranks); });
        py::list t(tokens.size());
        for (size_t i = 0; i < tokens.size(); ++i) t[i] = py::bytes(tokens[i]);
        return py::make_tuple(t, ranks);
      },
      py::arg("data"), "Parse .tiktoken file contents -> (token bytes, ranks).");

  m.def(
      "bpe_train",
      [](const py::list& texts, size_t n_tokens, const std::string& split) {
        std::vector<std::string_view> views;
        views.reserve(texts.size());
        for (py::handle t : texts) views.push_back(utf8(t, "each text"));
        const Split s = parse_split(split);
        std::vector<std::string> tokens;
        without_gil([&] { tokens = pyllmops::bpe::train_bpe(views, n_tokens, s); });
        py::list out(tokens.size());
        for (size_t i = 0; i < tokens.size(); ++i) out[i] = py::bytes(tokens[i]);
        return out;
      },
      py::arg("texts"), py::arg("n_tokens"), py::arg("split"),
      "Train byte-level BPE: token bytes in rank order (the 256 bytes first).");
}
