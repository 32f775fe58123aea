// tools/plot.hpp — PNG plots through gnuplot (Debian gnuplot-nox, installed by
// scripts/install-deps.sh). The data go to CSV files first; the plots are a view of them, so a
// machine without gnuplot loses only the pictures and is told so.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "drt/io/file.hpp"

namespace drt::cli {

inline bool gnuplot_available() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

// Runs `script` through gnuplot; returns whether it succeeded. The script is kept beside the
// plots (plot.gp) so that a reader can restyle them.
inline bool run_gnuplot(const std::filesystem::path& dir, const std::string& script) {
  // Paths go into the shell command and the script in single quotes.
  if (dir.string().find('\'') != std::string::npos) return false;
  const std::string path = (dir / "plot.gp").string();
  io::write_file_atomically(path, [&](std::FILE* f) { io::write_bytes(f, script.data(), script.size()); });
  const std::string command = "gnuplot '" + path + "' 2>'" + (dir / "plot.log").string() + "'";
  return std::system(command.c_str()) == 0;
}

// One model's curves: its name and its run's losses.csv.
struct PlotSeries {
  std::string name;
  std::string losses_csv;
};

// loss.png: training loss against step per model (losses.csv of each run); accuracy.png: passkey
// accuracy against context length (results.csv: columns length, multiple, then first-digit and
// all-digit accuracy per model, in `models`' order). Returns a line saying what was written.
// `guess_level`: the accuracy of the best constant answer on the test trials, drawn as a line.
inline std::string plot_lengthgen(const std::filesystem::path& dir, const std::vector<PlotSeries>& models,
                                  double guess_level) {
  if (!gnuplot_available())
    return "plots: skipped, gnuplot is not installed (bash scripts/install-deps.sh installs it); the data are in the CSV files\n";
  const std::string results = (dir / "results.csv").string();
  std::string loss_plot, accuracy_plot;
  for (std::size_t i = 0; i < models.size(); ++i) {
    const std::string sep = i ? ", " : "plot ";
    loss_plot += sep + "'" + models[i].losses_csv + "' using 1:2 with lines lw 2 title '" + models[i].name + "'";
    accuracy_plot += sep + "'" + results + "' using 1:" + std::to_string(3 + 2 * i) + " with linespoints lw 2 pt 7 title '" +
                     models[i].name + "'";
  }
  const std::string script =
      "set terminal png size 900,560\n"
      "set datafile separator ','\n"
      "set key autotitle columnhead\n"
      "set grid\n"
      "set output '" + (dir / "loss.png").string() + "'\n"
      "set title 'Training loss (next byte, passkey task)'\n"
      "set xlabel 'optimiser step'\nset ylabel 'cross-entropy (nats)'\n" +
      loss_plot + "\n"
      "set output '" + (dir / "accuracy.png").string() + "'\n"
      "set title 'Passkey accuracy (first digit) against context length'\n"
      "set logscale x 2\nset xlabel 'context length (tokens)'\nset ylabel 'accuracy'\nset yrange [0:1.05]\n"
      "set key bottom left\n" +
      accuracy_plot + ", " + std::to_string(guess_level) + " with lines dt 2 title 'best constant guess'\n";
  if (!run_gnuplot(dir, script)) return "plots: gnuplot failed, see " + (dir / "plot.log").string() + "\n";
  return "plots: " + (dir / "loss.png").string() + ", " + (dir / "accuracy.png").string() + "\n";
}

}  // namespace drt::cli
