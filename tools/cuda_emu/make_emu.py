#!/usr/bin/env python3
"""Turn cuda/*.cu, cuda/*.cuh and cuda/*.h (params.h) into host C++ for the CPU emulator (tools/cuda_emu/emu.h).

    python3 make_emu.py CUDA_DIR OUT_DIR

For every X.cu / X.cuh / X.h in CUDA_DIR writes OUT_DIR/X_emu.cu / OUT_DIR/X.cuh / OUT_DIR/X.h (stdlib only). Rewrites:
  * #include <cuda_*.h> / <cuda/...> / <mma.h>      -> #include "emu.h"
  * __shared__ T name[...];                          -> static T name[...]; registered + poisoned per block
  * extern __shared__ [__align__(n)] T name[];       -> T* const name = the emulator's dynamic arena
  * reinterpret_cast<                                -> emu::cast<  (alignment-checked)
  * asm volatile("<PTX>" : outs : ins : clobbers);   -> emu::ptx_* call, for the instructions in PTX below
Every rewrite keeps the line count and a #line directive points at the real file, so compiler errors
and sanitizer reports name cuda/X.cu:line. Anything not understood (an unknown PTX instruction, a
__shared__ declaration of an unsupported form) is an error naming the file and line: extend this
script and emu.h rather than editing the kernel.
"""
import os
import re
import sys


class Unsupported(Exception):
    pass


def line_of(s, i):
    return s.count('\n', 0, i) + 1


def pad(new, old):
    """`new` followed by as many newlines as `old` spans, so the line numbers after it do not move."""
    return new + '\n' * old.count('\n')


# ---------------------------------------------------------------- inline PTX
def scan_parens(s, i):
    """s[i] == '('; return the index just past the matching ')' (string and char literals skipped)."""
    depth, j = 0, i
    while j < len(s):
        c = s[j]
        if c in '"\'':
            q, j = c, j + 1
            while s[j] != q:
                j += 2 if s[j] == '\\' else 1
        elif c == '(':
            depth += 1
        elif c == ')':
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    raise Unsupported('unbalanced parentheses')


def split_top(s, sep):
    """Split on `sep` outside parentheses / brackets / string literals."""
    parts, depth, cur, j = [], 0, [], 0
    while j < len(s):
        c = s[j]
        if c in '"\'':
            k = j + 1
            while s[k] != c:
                k += 2 if s[k] == '\\' else 1
            cur.append(s[j:k + 1])
            j = k + 1
            continue
        if c in '([{':
            depth += 1
        elif c in ')]}':
            depth -= 1
        if c == sep and depth == 0:
            parts.append(''.join(cur))
            cur = []
        else:
            cur.append(c)
        j += 1
    parts.append(''.join(cur))
    return parts


def parse_asm(body):
    """body = the text between asm volatile( and its ')'. Returns (ptx, operands) where operands is the
    list of (constraint, expression) in PTX numbering (outputs first, then inputs)."""
    sections = split_top(body, ':')
    lits = re.findall(r'"((?:[^"\\]|\\.)*)"', sections[0])
    if not lits or re.sub(r'"(?:[^"\\]|\\.)*"', '', sections[0]).strip():
        raise Unsupported('asm template is not a string literal')
    ptx = ''.join(lits).replace('\\n', ' ').replace('\\t', ' ')
    ptx = ' '.join(ptx.split()).strip().rstrip(';').strip()
    if ';' in ptx:
        raise Unsupported(f'multi-instruction asm "{ptx}"')
    ops = []
    for sec in sections[1:3]:
        for op in split_top(sec, ','):
            op = op.strip()
            if not op:
                continue
            m = re.fullmatch(r'"([^"]*)"\s*\((.*)\)', op, re.S)
            if not m:
                raise Unsupported(f'asm operand "{op}"')
            ops.append((m.group(1), ' '.join(m.group(2).split())))
    return ptx, ops


def ptx_to_cpp(ptx, ops):
    def arg(tok):
        tok = tok.strip()
        if re.fullmatch(r'%\d+', tok):
            k = int(tok[1:])
            if k >= len(ops):
                raise Unsupported(f'operand {tok} of "{ptx}" missing')
            return '(' + ops[k][1] + ')'
        if re.fullmatch(r'\d+', tok):
            return tok
        raise Unsupported(f'operand "{tok}" of "{ptx}"')

    m = re.fullmatch(r'cp\.async\.(?:ca|cg)\.shared(?:::cta)?\.global(?:\.L2::\w+)?\s+\[(%\d+)\],\s*\[(%\d+)\],\s*(%\d+|\d+)(?:,\s*(%\d+|\d+))?', ptx)
    if m:
        src_size = arg(m.group(4)) if m.group(4) else arg(m.group(3))
        return f'emu::ptx_cp_async({arg(m.group(1))}, {arg(m.group(2))}, {arg(m.group(3))}, {src_size})'
    if ptx == 'cp.async.commit_group':
        return 'emu::ptx_cp_commit()'
    if ptx in ('griddepcontrol.wait', 'griddepcontrol.launch_dependents'):
        return '((void)0)'  # PDL: the emulator runs kernels one after another, so there is nothing to wait for
    m = re.fullmatch(r'prefetch\.global\.L2\s+\[(%\d+)\]', ptx)
    if m:
        return f'((void){arg(m.group(1))})'  # a cache hint: nothing to emulate
    m = re.fullmatch(r'cp\.async\.wait_group\s+(%\d+|\d+)', ptx)
    if m:
        return f'emu::ptx_cp_wait({arg(m.group(1))})'
    if ptx == 'cp.async.wait_all':
        return 'emu::ptx_cp_wait_all()'
    m = re.fullmatch(r'ld\.global(?:\.nc)?(?:\.L1::\w+)?(?:\.L2::\w+)?(?:\.v([24]))?\.(?:u32|s32|b32|f32)\s+(\{[^}]*\}|%\d+),\s*\[(%\d+)\]', ptx)
    if m:
        dsts = [arg(t) for t in m.group(2).strip('{}').split(',')]
        if len(dsts) != int(m.group(1) or 1):
            raise Unsupported(f'"{ptx}": vector width and destination count differ')
        return f'emu::ptx_ld_global((const void*){arg(m.group(3))}, {", ".join(dsts)})'
    m = re.fullmatch(r'ldmatrix\.sync\.aligned\.m8n8\.x([124])(\.trans)?\.shared(?:::cta)?\.b16\s+\{([^}]*)\},\s*\[(%\d+)\]', ptx)
    if m:
        dsts = [arg(t) for t in m.group(3).split(',')]
        if len(dsts) != int(m.group(1)):
            raise Unsupported(f'"{ptx}": matrix count and destination count differ')
        trans = 'true' if m.group(2) else 'false'
        return f'emu::ptx_ldmatrix({trans}, {arg(m.group(4))}, {", ".join(dsts)})'
    m = re.fullmatch(r'mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.(bf16|f16)\.(bf16|f16)\.f32\s+'
                     r'\{([^}]*)\},\s*\{([^}]*)\},\s*\{([^}]*)\},\s*\{([^}]*)\}', ptx)
    if m:
        if m.group(1) != m.group(2):
            raise Unsupported(f'"{ptx}": mixed input types')
        groups = [[arg(t) for t in m.group(k).split(',')] for k in (3, 4, 5, 6)]
        if [len(x) for x in groups] != [4, 4, 2, 4]:
            raise Unsupported(f'"{ptx}": operand counts must be 4, 4, 2, 4')
        tag = 'true' if m.group(1) == 'bf16' else 'false'
        return f'emu::ptx_mma_m16n8k16<{tag}>({", ".join(sum(groups, []))})'
    raise Unsupported(f'inline PTX "{ptx}" has no emulation (add it to make_emu.py and emu.h)')


def mask_comments(s):
    """s with every comment character blanked (newlines kept), string / char literals untouched:
    rewrites only look at code."""
    out, j, n = list(s), 0, len(s)
    while j < n:
        c = s[j]
        if c in '"\'':
            k = j + 1
            while k < n and s[k] != c:
                k += 2 if s[k] == '\\' else 1
            j = k + 1
        elif s.startswith('//', j):
            k = s.find('\n', j)
            k = n if k < 0 else k
            for i in range(j, k):
                out[i] = ' '
            j = k
        elif s.startswith('/*', j):
            k = s.find('*/', j + 2)
            k = n if k < 0 else k + 2
            for i in range(j, k):
                if out[i] != '\n':
                    out[i] = ' '
            j = k
        else:
            j += 1
    return ''.join(out)


def asm_edits(code):
    edits = []
    for m in re.finditer(r'\basm\s*(?:volatile\s*|__volatile__\s*)?\(', code):
        end = scan_parens(code, m.end() - 1)
        semi = re.match(r'\s*;', code[end:])
        if not semi:
            raise Unsupported(f'line {line_of(code, m.start())}: asm statement not followed by ;')
        try:
            ptx, ops = parse_asm(code[m.end():end - 1])
            new = ptx_to_cpp(ptx, ops) + ';'
        except Unsupported as e:
            raise Unsupported(f'line {line_of(code, m.start())}: {e}')
        end += semi.end()
        edits.append((m.start(), end, pad(new, code[m.start():end])))
    return edits


# ---------------------------------------------------------------- shared memory
def shared_edits(code):
    edits = []
    for m in re.finditer(r'\bextern\s+__shared__\s+(?:__align__\((\d+)\)\s+)?((?:[\w:<>]+\s+)+?)(\w+)\s*\[\s*\]\s*;', code):
        align, typ, name = m.group(1), ' '.join(m.group(2).split()), m.group(3)
        a = align or f'alignof({typ})'
        edits.append((m.start(), m.end(), pad(f'{typ}* const {name} = ({typ}*)emu::dyn_smem({a});', m.group(0))))
    for m in re.finditer(r'\b__shared__\s+(?:__align__\((\d+)\)\s+)?((?:[\w:<>]+\s+)+(\w+)\s*(?:\[[^\]]*\]\s*)*);', code):
        if re.search(r'\bextern\s+$', code[:m.start()]):
            continue
        align, decl, name = m.group(1), m.group(2), m.group(3)
        a = f'alignas({align}) ' if align else ''
        edits.append((m.start(), m.end(), pad(f'{a}static {" ".join(decl.split())}; EMU_SHARED_REG({name});', m.group(0))))
    covered = [(a, b) for a, b, _ in edits]
    for m in re.finditer(r'\b__shared__\b', code):
        if not any(a <= m.start() < b for a, b in covered):
            raise Unsupported(f'line {line_of(code, m.start())}: __shared__ declaration of an unsupported form '
                              '(one declarator, no initialiser, optional __align__(n))')
    return edits


# ---------------------------------------------------------------- whole file
def transform(src):
    code = mask_comments(src)
    edits = asm_edits(code) + shared_edits(code)
    for m in re.finditer(r'#include\s*<(?:cuda[\w/.]*|mma\.h|device_launch_parameters\.h)>', code):
        edits.append((m.start(), m.end(), '#include "emu.h"'))
    for m in re.finditer(r'\breinterpret_cast<', code):
        edits.append((m.start(), m.end(), 'emu::cast<'))
    edits.sort()
    out, pos = [], 0
    for a, b, new in edits:
        if a < pos:
            raise Unsupported(f'line {line_of(src, a)}: overlapping rewrites')
        out += [src[pos:a], new]
        pos = b
    out.append(src[pos:])
    return ''.join(out)


def main():
    if len(sys.argv) != 3:
        sys.exit('usage: make_emu.py CUDA_DIR OUT_DIR')
    src_dir, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    names = sorted(f for f in os.listdir(src_dir) if f.endswith(('.cu', '.cuh', '.h')))
    if not names:
        sys.exit(f'make_emu.py: no .cu / .cuh files in {src_dir}')
    bad = False
    for f in names:
        path = os.path.abspath(os.path.join(src_dir, f))
        try:
            body = transform(open(path, encoding='utf-8').read())
        except Unsupported as e:
            print(f'make_emu.py: {path}: {e}', file=sys.stderr)
            bad = True
            continue
        dst = os.path.join(out_dir, f[:-3] + '_emu.cu' if f.endswith('.cu') else f)
        with open(dst, 'w', encoding='utf-8') as o:
            o.write(f'// GENERATED by tools/cuda_emu/make_emu.py from {path}: do not edit.\n')
            o.write('#include "emu.h"\n')
            o.write(f'#line 1 "{path}"\n')
            o.write(body)
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main()
