package pathinfo

import "github.com/p2pstore/p2pstore/narview/storepath"

// Meta is a path's Nix metadata in text form, as it travels: in
// `p2pstore import`'s requests to the node, and in the records peers
// exchange (which add the tree's root). Its JSON keys are Info's. Nothing
// in it is checked until it becomes an Info.
type Meta struct {
	Path             string   `json:"path"`
	NarHash          string   `json:"nar_hash"`
	NarSize          uint64   `json:"nar_size"`
	References       []string `json:"references,omitempty"`
	Deriver          string   `json:"deriver,omitempty"`
	Sigs             []string `json:"sigs,omitempty"`
	CA               string   `json:"ca,omitempty"`
	RegistrationTime int64    `json:"registration_time,omitempty"`
}

// MetaOf returns the metadata of info.
func MetaOf(info *Info) Meta {
	return Meta{
		Path: info.StorePath, NarHash: info.NarHash.String(), NarSize: info.NarSize,
		References: info.References, Deriver: info.Deriver, Sigs: info.Sigs, CA: info.CA,
		RegistrationTime: info.RegistrationTime,
	}
}

// Info returns the path info m describes, with no tree root. Only the
// NarHash is parsed here; the caller validates the rest (Info.Validate).
func (m *Meta) Info() (*Info, error) {
	h, err := storepath.ParseNarHash(m.NarHash)
	if err != nil {
		return nil, err
	}
	return &Info{
		StorePath: m.Path, NarHash: h, NarSize: m.NarSize, References: m.References,
		Deriver: m.Deriver, Sigs: m.Sigs, CA: m.CA, RegistrationTime: m.RegistrationTime,
	}, nil
}
