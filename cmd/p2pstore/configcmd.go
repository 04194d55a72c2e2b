package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func configCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Print the effective settings and where each came from (default, file, env or flag)",
		Long: `Print the effective settings and where each came from: its default, the
config file, an environment variable or a flag. It needs no running node,
and refuses what the node would refuse, with the same line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if asJSON {
				type setting struct {
					Value  any    `json:"value"`
					Source string `json:"source"`
				}
				out := struct {
					File     string             `json:"config_file"`
					Searched []string           `json:"searched,omitempty"`
					Settings map[string]setting `json:"settings"`
				}{cfg.File, cfg.Searched, map[string]setting{}}
				for _, s := range cfg.Settings() {
					out.Settings[s.Key] = setting{s.Value, s.Source}
				}
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			switch {
			case cfg.File != "":
				fmt.Printf("config file: %s\n", cfg.File)
			default:
				fmt.Printf("config file: none (looked for %s)\n", strings.Join(cfg.Searched, ", "))
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			for _, s := range cfg.Settings() {
				fmt.Fprintf(w, "%s\t%s\t%s\n", s.Key, showValue(s.Value), s.Source)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// showValue prints a setting's value on one line: lists joined by commas,
// an empty value as "none", sizes with their binary units.
func showValue(v any) string {
	switch x := v.(type) {
	case string:
		if x == "" {
			return "none"
		}
		return x
	case []string:
		if len(x) == 0 {
			return "none"
		}
		return strings.Join(x, ",")
	case int64:
		if x >= 1024 {
			return fmt.Sprintf("%d (%s)", x, humanBytes(uint64(x)))
		}
	}
	return fmt.Sprint(v)
}
