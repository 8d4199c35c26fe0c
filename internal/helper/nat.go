package helper

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// NATTable is banger's one nftables table. Everything banger adds lives in it, so removing
// banger's rules is deleting this table, and nothing else on the host is ever touched.
const NATTable = "banger"

// natRuleCount is how many rules ensureNAT installs (doctor compares against it).
const natRuleCount = 3

func (o *Ops) nftConn() (*nftables.Conn, error) {
	if o.nsFd >= 0 {
		return nftables.New(nftables.WithNetNSFd(o.nsFd))
	}
	return nftables.New()
}

func (o *Ops) findTable(c *nftables.Conn) (*nftables.Table, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == NATTable {
			return t, nil
		}
	}
	return nil, nil
}

// ensureNAT (re)writes table inet banger in one transaction: the old table (if any) is
// deleted and the new one added atomically, so the rules are always exactly these.
//
//	table inet banger {
//	  chain postrouting { type nat hook postrouting priority srcnat;
//	    ip saddr SUBNET ip daddr != SUBNET masquerade }
//	  chain forward { type filter hook forward priority filter; policy accept;
//	    iifname BRIDGE accept
//	    oifname BRIDGE ct state established,related accept }
//	}
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
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: NATTable})
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})

	net4 := o.cfg.Subnet.Masked().Addr().As4()
	mask := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-o.cfg.Subnet.Bits()))
	ipv4 := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
	inSubnet := func(offset uint32, op expr.CmpOp) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: op, Register: 1, Data: net4[:]},
		}
	}
	masq := append(append(append([]expr.Any{}, ipv4...), inSubnet(12, expr.CmpOpEq)...), inSubnet(16, expr.CmpOpNeq)...)
	masq = append(masq, &expr.Masq{})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: masq})

	ifname := make([]byte, unix.IFNAMSIZ)
	copy(ifname, o.cfg.Bridge)
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	ctMask := binary.NativeEndian.AppendUint32(nil, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname},
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ctMask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install NAT rules in table inet %s: %w", NATTable, err)
	}
	return nil
}

// EnsureNAT installs the masquerade and forwarding rules and enables IPv4 forwarding.
func (o *Ops) EnsureNAT() error { return o.run(o.ensureNAT) }

func (o *Ops) removeNAT() error {
	c, err := o.nftConn()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	defer c.CloseLasting()
	t, err := o.findTable(c)
	if err != nil || t == nil {
		return err
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete table inet %s: %w", NATTable, err)
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
		if ch.Table.Name != NATTable {
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
			return errors.New("no table inet " + NATTable)
		}
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		for _, ch := range chains {
			if ch.Table.Name != NATTable {
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
