package helper

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// NATTableFor is the nftables table (family inet) of the helper serving bridge. Everything
// a helper adds lives in its table, so removing its rules is deleting that table, and
// nothing else on the host is touched: not the host's own rules, not another user's helper
// on another bridge (one shared table let the second helper's ensure_nat replace the
// first one's rules, and with them its guests' isolation).
func NATTableFor(bridge string) string { return "banger-" + bridge }

// legacyNATTable is the one table every helper shared before tables were per bridge; it is
// replaced by the bridge's own table on ensure_nat and removed by teardown.
const legacyNATTable = "banger"

func (o *Ops) natTable() string { return NATTableFor(o.cfg.Bridge) }

func (o *Ops) nftConn() (*nftables.Conn, error) {
	if o.nsFd >= 0 {
		return nftables.New(nftables.WithNetNSFd(o.nsFd))
	}
	return nftables.New()
}

func (o *Ops) findTable(c *nftables.Conn) (*nftables.Table, error) {
	return findTableNamed(c, o.natTable())
}

func findTableNamed(c *nftables.Conn, name string) (*nftables.Table, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == name {
			return t, nil
		}
	}
	return nil, nil
}

// delLegacyTable queues the deletion of the pre-per-bridge table, if it exists, and says
// whether it did.
func delLegacyTable(c *nftables.Conn) (bool, error) {
	t, err := findTableNamed(c, legacyNATTable)
	if t != nil {
		c.DelTable(t)
	}
	return t != nil, err
}

// ensureNAT (re)writes table inet banger in one transaction: the old table (if any) is
// deleted and the new one added atomically, so the rules are always exactly these.
//
//	table inet banger {
//	  chain postrouting { type nat hook postrouting priority srcnat;
//	    ip saddr SUBNET ip daddr != SUBNET masquerade }
//	  chain forward { type filter hook forward priority filter; policy accept;
//	    iifname BRIDGE ip saddr != SUBNET drop
//	    iifname BRIDGE meta nfproto ipv6 drop
//	    iifname BRIDGE oifname BRIDGE reject        # only with isolate_vms (tcp reset + icmpx)
//	    iifname BRIDGE accept
//	    oifname BRIDGE ct state established,related accept
//	    oifname BRIDGE reject                       # tcp reset + icmpx admin-prohibited
//	  }
//	  chain input { type filter hook input priority filter; policy accept;
//	    iifname BRIDGE ip saddr != SUBNET drop
//	    iifname BRIDGE meta nfproto ipv6 drop
//	    iifname BRIDGE ct state established,related accept
//	    iifname BRIDGE icmp type echo-request accept
//	    iifname BRIDGE udp dport 53 accept
//	    iifname BRIDGE tcp dport 53 accept
//	    iifname BRIDGE reject                       # tcp reset + icmpx admin-prohibited
//	  }
//	}
//
// The chains keep policy accept and end in explicit per-bridge verdicts instead: a policy
// drop would drop all of the host's other forwarded and incoming traffic too, which is not
// banger's to decide. Forged sources are dropped before any conntrack accept (a forged
// packet could match someone else's connection) and never answered (the answer would go to
// the forged address); refused new connections are rejected so callers fail at once.
func (o *Ops) ensureNAT() error {
	if err := enableForwarding(); err != nil {
		return err
	}
	c, err := o.nftConn()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	defer c.CloseLasting()
	old, err := o.findTable(c)
	if err != nil {
		return err
	}
	if old != nil {
		c.DelTable(old)
	}
	if _, err := delLegacyTable(c); err != nil {
		return err
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: o.natTable()})
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	in := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	for chain, rules := range o.natRules() {
		ch := map[string]*nftables.Chain{"postrouting": post, "forward": fwd, "input": in}[chain]
		for _, exprs := range rules {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install NAT and filter rules in table inet %s: %w", o.natTable(), err)
	}
	return nil
}

// natRuleCount is how many rules ensureNAT installs (doctor compares against it).
func (o *Ops) natRuleCount() int {
	n := 0
	for _, rules := range o.natRules() {
		n += len(rules)
	}
	return n
}

// natRules builds the rules of each chain, in order (see ensureNAT).
func (o *Ops) natRules() map[string][][]expr.Any {
	net4 := o.cfg.Subnet.Masked().Addr().As4()
	mask := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-o.cfg.Subnet.Bits()))
	ifname := make([]byte, unix.IFNAMSIZ)
	copy(ifname, o.cfg.Bridge)
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	meta := func(key expr.MetaKey, data []byte) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: key, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data},
		}
	}
	fromBridge := meta(expr.MetaKeyIIFNAME, ifname)
	toBridge := meta(expr.MetaKeyOIFNAME, ifname)
	ipv4 := meta(expr.MetaKeyNFPROTO, []byte{unix.NFPROTO_IPV4})
	ipv6 := meta(expr.MetaKeyNFPROTO, []byte{unix.NFPROTO_IPV6})
	tcp := meta(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_TCP})
	udp := meta(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_UDP})
	icmp := meta(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_ICMP})
	inSubnet := func(offset uint32, op expr.CmpOp) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: op, Register: 1, Data: net4[:]},
		}
	}
	transport := func(offset, n uint32, data []byte) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: n},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data},
		}
	}
	ctMask := binary.NativeEndian.AppendUint32(nil, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	established := []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ctMask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
	verdict := func(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }
	acceptV, dropV := verdict(expr.VerdictAccept), verdict(expr.VerdictDrop)
	// reject answers TCP with a reset and everything else with "administratively prohibited".
	reject := func(match []expr.Any) [][]expr.Any {
		return [][]expr.Any{
			cat(match, tcp, []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}),
			cat(match, []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}}),
		}
	}
	forged := cat(fromBridge, ipv4, inSubnet(12, expr.CmpOpNeq), dropV)
	noV6 := cat(fromBridge, ipv6, dropV)

	fwd := [][]expr.Any{forged, noV6}
	if o.cfg.IsolateVMs {
		fwd = append(fwd, reject(cat(fromBridge, toBridge))...)
	}
	fwd = append(fwd, cat(fromBridge, acceptV), cat(toBridge, established, acceptV))
	fwd = append(fwd, reject(toBridge)...)

	in := [][]expr.Any{forged, noV6,
		cat(fromBridge, established, acceptV),
		cat(fromBridge, ipv4, icmp, transport(0, 1, []byte{8}), acceptV), // echo-request
		cat(fromBridge, udp, transport(2, 2, []byte{0, 53}), acceptV),
		cat(fromBridge, tcp, transport(2, 2, []byte{0, 53}), acceptV),
	}
	in = append(in, reject(fromBridge)...)

	masq := cat(ipv4, inSubnet(12, expr.CmpOpEq), inSubnet(16, expr.CmpOpNeq), []expr.Any{&expr.Masq{}})
	return map[string][][]expr.Any{"postrouting": {masq}, "forward": fwd, "input": in}
}

// EnsureNAT installs the masquerade, forward and input rules and enables IPv4 forwarding.
func (o *Ops) EnsureNAT() error { return o.run(o.ensureNAT) }

func (o *Ops) removeNAT() error {
	c, err := o.nftConn()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	defer c.CloseLasting()
	t, err := o.findTable(c)
	if err != nil {
		return err
	}
	if t != nil {
		c.DelTable(t)
	}
	legacy, err := delLegacyTable(c)
	if err != nil || (t == nil && !legacy) {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete table inet %s: %w", o.natTable(), err)
	}
	return nil
}

// natState reports whether the table exists and how many rules it holds.
func (o *Ops) natState() (bool, int, error) {
	c, err := o.nftConn()
	if err != nil {
		return false, 0, fmt.Errorf("open nftables: %w", err)
	}
	defer c.CloseLasting()
	t, err := o.findTable(c)
	if err != nil || t == nil {
		return false, 0, err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return true, 0, fmt.Errorf("list chains: %w", err)
	}
	n := 0
	for _, ch := range chains {
		if ch.Table.Name != t.Name {
			continue
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return true, 0, fmt.Errorf("list rules of chain %s: %w", ch.Name, err)
		}
		n += len(rules)
	}
	return true, n, nil
}

// NATRules returns the rules of banger's table by chain, for tests and diagnostics.
func (o *Ops) NATRules() (map[string][]*nftables.Rule, error) {
	out := map[string][]*nftables.Rule{}
	err := o.run(func() error {
		c, err := o.nftConn()
		if err != nil {
			return err
		}
		defer c.CloseLasting()
		t, err := o.findTable(c)
		if err != nil {
			return err
		}
		if t == nil {
			return errors.New("no table inet " + o.natTable())
		}
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		for _, ch := range chains {
			if ch.Table.Name != t.Name {
				continue
			}
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return err
			}
			out[ch.Name] = rules
		}
		return nil
	})
	return out, err
}
