// safetensors and .npy: files built byte by byte from the format descriptions, round trips,
// bf16 rounding, error messages naming the file and the problem, and crash-safe writes.
#include <drt/io/npy.hpp>
#include <drt/io/safetensors.hpp>

#include <gtest/gtest.h>

#include <filesystem>

using namespace drt;

namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("drt_test_io_" + std::to_string(::getpid()) + "_" + name)).string();
}
void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}
std::string le64(std::uint64_t n) {
  std::string s;
  for (int i = 0; i < 8; ++i) s += static_cast<char>((n >> (8 * i)) & 0xFF);
  return s;
}
std::string f32(float v) { return std::string(reinterpret_cast<const char*>(&v), 4); }

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Safetensors, ReadsAHandMadeFile) {
  const std::string header = R"({"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},)"
                             R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}})";
  // bf16 0x3FC0 = 1.5, 0xC040 = -3.0
  const std::string data = f32(0.25f) + f32(-7.0f) + std::string("\xC0\x3F\x40\xC0", 4);
  const std::string path = temp_path("hand.safetensors");
  write_raw(path, le64(header.size()) + header + data);
  const auto f = io::SafetensorsFile::read(path);
  EXPECT_EQ(f.tensor<float>("a").to_vector(), (std::vector<float>{0.25f, -7.0f}));
  EXPECT_EQ(f.tensor<double>("b").to_vector(), (std::vector<double>{1.5, -3.0}));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  std::filesystem::remove(path);
}

TEST(Safetensors, RoundTripsFloat32ExactlyAndBfloat16WithRounding) {
  const std::string path = temp_path("rt.safetensors");
  const auto w = Tensor<float>::from({2, 3}, {1.0f, -2.5f, 3.14159f, 1e-8f, 65504.0f, -0.0f});
  io::SafetensorsWriter out;
  out.add("model.w", w);
  out.add("model.w_bf16", w, "BF16");
  out.write(path);
  const auto in = io::SafetensorsFile::read(path);
  EXPECT_EQ(in.entry("model.w").shape, Shape({2, 3}));
  EXPECT_EQ(in.tensor<float>("model.w").to_vector(), w.to_vector());
  const auto b = in.tensor<float>("model.w_bf16").to_vector();
  for (std::size_t i = 0; i < b.size(); ++i) {
    const float x = w.to_vector()[i];
    EXPECT_LE(std::abs(b[i] - x), std::abs(x) * (1.0f / 256)) << i;  // 8 bits of mantissa
  }
  EXPECT_EQ(b[2], 3.140625f);  // 3.14159 rounds to the nearest bf16
  std::filesystem::remove(path);
}

TEST(Safetensors, BadFilesNameTheFileAndTheProblem) {
  const std::string path = temp_path("bad.safetensors");
  write_raw(path, "abc");
  EXPECT_NE(error_of([&] { io::SafetensorsFile::read(path); }).find(path), std::string::npos);
  write_raw(path, le64(1000) + "{}");
  EXPECT_NE(error_of([&] { io::SafetensorsFile::read(path); }).find("exceeds the file size"), std::string::npos);
  write_raw(path, le64(5) + "{oops");
  EXPECT_NE(error_of([&] { io::SafetensorsFile::read(path); }).find("not valid JSON"), std::string::npos);
  std::string h = R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
  write_raw(path, le64(h.size()) + h + std::string(8, '\0'));
  EXPECT_NE(error_of([&] { io::SafetensorsFile::read(path); }).find("'x'"), std::string::npos);
  h = R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  write_raw(path, le64(h.size()) + h + std::string(1, '\0'));
  EXPECT_NE(error_of([&] { io::SafetensorsFile::read(path); }).find("unsupported dtype U8"), std::string::npos);
  EXPECT_NE(error_of([&] { io::SafetensorsFile::read(temp_path("missing")); }).find("cannot open"), std::string::npos);
  std::filesystem::remove(path);
}

TEST(AtomicWrite, AFailedWriteLeavesThePreviousFileUntouched) {
  const std::string path = temp_path("keep.safetensors");
  io::SafetensorsWriter first;
  first.add("w", Tensor<float>::full({4}, 1.0f));
  first.write(path);
  const auto before = io::read_file(path);
  EXPECT_THROW(io::write_file_atomically(path, [](std::FILE* f) {
                 io::write_bytes(f, "partial", 7);
                 throw Error("simulated crash while writing");
               }),
               Error);
  EXPECT_EQ(io::read_file(path), before);
  for (const auto& entry : std::filesystem::directory_iterator(std::filesystem::temp_directory_path()))
    EXPECT_EQ(entry.path().string().find(path + ".tmp"), std::string::npos) << "temporary file left behind";
  std::filesystem::remove(path);
}

TEST(Npy, ReadsInt64AndInt32AndRoundTripsFloat32) {
  const std::string path = temp_path("tokens.npy");
  std::string header = "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }";
  header.append(64 - (10 + header.size() + 1) % 64, ' ');
  header += '\n';
  std::string data;
  for (std::int64_t v : {5, 50264, 7}) data += std::string(reinterpret_cast<const char*>(&v), 8);
  write_raw(path, std::string("\x93NUMPY\x01\x00", 8) + static_cast<char>(header.size()) + '\0' + header + data);
  const auto a = io::read_npy(path);
  EXPECT_EQ(a.shape, Shape({3}));
  EXPECT_EQ(a.as<std::int32_t>().to_vector(), (std::vector<std::int32_t>{5, 50264, 7}));

  const auto logits = Tensor<float>::from({2, 2}, {0.5f, -1.0f, 2.0f, 3.5f});
  io::write_npy(path, logits);
  const auto back = io::read_npy(path);
  EXPECT_EQ(back.descr, "<f4");
  EXPECT_EQ(back.shape, Shape({2, 2}));
  EXPECT_EQ(back.as<float>().to_vector(), logits.to_vector());
  std::filesystem::remove(path);
}

TEST(Npy, BadFilesNameTheFileAndTheProblem) {
  const std::string path = temp_path("bad.npy");
  write_raw(path, "not numpy at all");
  EXPECT_NE(error_of([&] { io::read_npy(path); }).find("bad magic"), std::string::npos);
  std::string header = "{'descr': '<U4', 'fortran_order': False, 'shape': (1,), }\n";
  write_raw(path, std::string("\x93NUMPY\x01\x00", 8) + static_cast<char>(header.size()) + '\0' + header + "abcd");
  const std::string e = error_of([&] { io::read_npy(path); });
  EXPECT_NE(e.find("unsupported dtype '<U4'"), std::string::npos) << e;
  EXPECT_NE(e.find(path), std::string::npos) << e;
  header = "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }\n";
  write_raw(path, std::string("\x93NUMPY\x01\x00", 8) + static_cast<char>(header.size()) + '\0' + header + "abcd");
  EXPECT_NE(error_of([&] { io::read_npy(path); }).find("needs 12 data bytes"), std::string::npos);
  std::filesystem::remove(path);
}
