"""Module import graph of a crate's src/, file by file (a module is a file), from `crate::`
and `super::` paths in code (comments and #[cfg(test)] modules excluded). Prints the edges
and exits 1 when modules import each other in a circle.

Usage: scripts/module-cycles.py crates/proxy/src [-q]"""
import os,re,sys
root=sys.argv[1]
mods={}
for dp,dn,fn in os.walk(root):
    for f in fn:
        if f.endswith('.rs'):
            p=os.path.join(dp,f); rel=os.path.relpath(p,root)[:-3]
            mods['crate' if rel=='lib' else rel.replace('/','::')]=open(p).read()
reexports={'Error':'error','Shared':'shared','ProxyConfig':'config','ConnInfo':'flow'}
def resolve(path):
    parts=path.split('::')
    best=None
    for i in range(1,len(parts)+1):
        cand='::'.join(parts[:i])
        if cand in mods: best=cand
    if best is None and parts[0] in reexports: best=reexports[parts[0]]
    return best
edges=set()
for m,src in mods.items():
    if m=='crate': continue
    src=re.split(r'#\[cfg\(test\)\]',src)[0]
    src=re.sub(r'//[^\n]*','',src)
    # expand use crate::{a, b::c, d::{e,f}} one level
    for grp in re.findall(r'crate::\{([^;]*?)\};',src,re.S):
        for item in re.split(r',(?![^{]*\})',grp):
            item=item.strip()
            if not item: continue
            head=item.split('::{')[0].split(' as ')[0].strip()
            r=resolve(head)
            if r and r!=m and not m.startswith(r+'::'): edges.add((m,r))
    for path in re.findall(r'crate::([A-Za-z_][A-Za-z_0-9]*(?:::[A-Za-z_][A-Za-z_0-9]*)*)',src):
        r=resolve(path)
        if r and r!=m and not m.startswith(r+'::'): edges.add((m,r))
    # super:: from a submodule to its parent's siblings
    if '::' in m:
        parent=m.rsplit('::',1)[0]
        for path in re.findall(r'super::([A-Za-z_][A-Za-z_0-9]*)',src):
            r=resolve(parent+'::'+path) or parent
            if r!=m and not m.startswith(r+'::'): edges.add((m,r))
g={}
for a,b in edges: g.setdefault(a,set()).add(b)
if '-q' not in sys.argv:
    for a in sorted(g): print(f"{a:22} -> {', '.join(sorted(g[a]))}")
# Tarjan SCC
idx={};low={};st=[];on=set();sccs=[];c=[0]
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in g.get(v,()):
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v: break
        if len(comp)>1: sccs.append(comp)
sys.setrecursionlimit(10000)
for v in list(g): 
    if v not in idx: sc(v)
print(f"{root}: module cycles:", sccs if sccs else "none")
sys.exit(1 if sccs else 0)
