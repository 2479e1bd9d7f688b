import re,sys
# Top-level `layer(X, opts)("name", (it) => {` ... `})` blocks become `sideBySide("name", () => layer(X, opts)((it) => {` ... `}))`.
for p in sys.argv[1:]:
    lines=open(p).read().split("\n")
    out=[];i=0;n=0
    while i<len(lines):
        l=lines[i]
        if l.startswith("layer("):
            # gather until a line containing `)(` + name + `, (it) => {`
            j=i
            while not re.search(r'\)\((.+), \(it\) => \{$', lines[j]): j+=1
            head="\n".join(lines[i:j+1])
            m=re.search(r'\)\(\s*(.+?),\s*\(it\) => \{$', head, re.S)
            name=m.group(1)
            head=head[:m.start()]+")((it) => {"
            head="sideBySide("+name+", () =>\n  "+head if "\n" in head else "sideBySide("+name+", () => "+head
            out.append(head)
            k=j+1
            while lines[k]!="})": out.append(lines[k]); k+=1
            out.append("}))"); i=k+1; n+=1
            continue
        out.append(l); i+=1
    open(p,"w").write("\n".join(out)); print(p,n)
