"""Shared by the benchmark scripts' report steps: replace one marked section of BENCHMARKS.md.

    import sys; sys.path.insert(0, "scripts"); import bench_md
    bench_md.write_section(lines)   # lines[0] / lines[-1] are its <!-- ...:start/end --> markers
"""
import re


def write_section(lines, path="BENCHMARKS.md"):
    start, end = lines[0], lines[-1]
    section = "\n".join(lines)
    text = open(path).read()
    if start in text:
        text = re.sub(re.escape(start) + r".*" + re.escape(end), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    open(path, "w").write(text)
    print(section)
