"""Regenerate data/fixture.csv: well-known small molecules labelled with RDKit's Crippen logP.

The labels are computed, not measured: the fixture exists so tests and examples run without the
real data. Run ``python data/make_fixture.py`` to rebuild it (deterministic).
"""
from pathlib import Path

from rdkit import Chem
from rdkit.Chem import Crippen

MOLECULES = {
    "ethanol": "CCO", "methanol": "CO", "propanol": "CCCO", "butanol": "CCCCO", "hexanol": "CCCCCCO",
    "acetic acid": "CC(=O)O", "acetone": "CC(C)=O", "diethyl ether": "CCOCC", "ethyl acetate": "CCOC(C)=O",
    "benzene": "c1ccccc1", "toluene": "Cc1ccccc1", "phenol": "Oc1ccccc1", "aniline": "Nc1ccccc1",
    "anisole": "COc1ccccc1", "chlorobenzene": "Clc1ccccc1", "benzoic acid": "OC(=O)c1ccccc1",
    "nitrobenzene": "O=[N+]([O-])c1ccccc1", "pyridine": "c1ccncc1", "naphthalene": "c1ccc2ccccc2c1",
    "biphenyl": "c1ccc(-c2ccccc2)cc1", "cyclohexane": "C1CCCCC1", "cyclohexanol": "OC1CCCCC1",
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O", "paracetamol": "CC(=O)Nc1ccc(O)cc1", "ibuprofen": "CC(C)Cc1ccc(C(C)C(=O)O)cc1",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "nicotine": "CN1CCC[C@H]1c1cccnc1", "lidocaine": "CCN(CC)CC(=O)Nc1c(C)cccc1C",
    "diazepam": "CN1C(=O)CN=C(c2ccccc2)c2cc(Cl)ccc21", "propranolol": "CC(C)NCC(O)COc1cccc2ccccc12",
    "diphenhydramine": "CN(C)CCOC(c1ccccc1)c1ccccc1", "fluoxetine": "CNCCC(Oc1ccc(C(F)(F)F)cc1)c1ccccc1",
    "haloperidol": "O=C(CCCN1CCC(O)(c2ccc(Cl)cc2)CC1)c1ccc(F)cc1", "naproxen": "COc1ccc2cc([C@H](C)C(=O)O)ccc2c1",
    "diclofenac": "OC(=O)Cc1ccccc1Nc1c(Cl)cccc1Cl", "indomethacin": "COc1ccc2c(c1)c(CC(=O)O)c(C)n2C(=O)c1ccc(Cl)cc1",
    "carbamazepine": "NC(=O)N1c2ccccc2C=Cc2ccccc21", "chlorpromazine": "CN(C)CCCN1c2ccccc2Sc2ccc(Cl)cc21",
    "imipramine": "CN(C)CCCN1c2ccccc2CCc2ccccc21", "warfarin": "CC(=O)CC(c1ccccc1)c1c(O)c2ccccc2oc1=O",
    "metformin": "CN(C)C(=N)NC(N)=N", "atenolol": "CC(C)NCC(O)COc1ccc(CC(N)=O)cc1", "theophylline": "Cn1c2nc[nH]c2c(=O)n(C)c1=O",
    "salicylic acid": "OC(=O)c1ccccc1O", "benzocaine": "CCOC(=O)c1ccc(N)cc1", "procaine": "CCN(CC)CCOC(=O)c1ccc(N)cc1",
    "quinine": "COc1ccc2nccc([C@@H](O)[C@@H]3C[C@@H]4CCN3C[C@@H]4C=C)c2c1", "morphine": "CN1CC[C@]23c4c5ccc(O)c4O[C@H]2[C@@H](O)C=C[C@H]3[C@H]1C5",
    "testosterone": "C[C@]12CC[C@H]3[C@@H](CCC4=CC(=O)CC[C@@]43C)[C@@H]1CC[C@@H]2O", "cholesterol": "CC(C)CCC[C@@H](C)[C@H]1CC[C@H]2[C@@H]3CC=C4C[C@@H](O)CC[C@]4(C)[C@H]3CC[C@]12C",
    "glucose": "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O", "glycine": "NCC(=O)O", "alanine": "C[C@H](N)C(=O)O",
    "urea": "NC(N)=O", "thiophene": "c1ccsc1", "furan": "c1ccoc1", "indole": "c1ccc2[nH]ccc2c1", "quinoline": "c1ccc2ncccc2c1",
    "styrene": "C=Cc1ccccc1", "acetophenone": "CC(=O)c1ccccc1", "benzaldehyde": "O=Cc1ccccc1", "benzylamine": "NCc1ccccc1",
    "sulfanilamide": "Nc1ccc(S(N)(=O)=O)cc1", "trimethoprim": "COc1cc(Cc2cnc(N)nc2N)cc(OC)c1OC",
}


def main() -> None:
    lines = ["name,smiles,logp_crippen"]
    for name, smiles in MOLECULES.items():
        mol = Chem.MolFromSmiles(smiles)
        assert mol is not None, name
        lines.append(f"{name},{smiles},{Crippen.MolLogP(mol):.3f}")
    Path(__file__).with_name("fixture.csv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
